"""Does the memory carry the answer? Answer-token loss with memory vs without, per adapter and task.

Accuracy stays at 0% long after training has started to move the memory, so this is the finer gauge the
training curve uses. Each sample (eval split: text training never saw) is a whole number of chunks, so
the context sits entirely in memory and the live chunk holds only the question and the answer. Per
adapter, three teacher-forced losses per answer token (nats):
  memory     context read into memory, question + answer live (what the CLI does)
  no memory  the same question + answer with an empty memory (what the model guesses without reading)
  in window  context, question and answer in one live chunk (the same weights with plain attention
             over the whole text; a ceiling, only where it fits the backbone's window)
gain = no memory - memory: how many nats per answer token the memory supplies (0 = it carries nothing).

With two or more adapters, every adapter reads the same samples, so their memory losses pair sample by
sample: the "paired" table gives each adapter's mean difference from the first one with its standard
error (negative: that adapter's memory serves the answer better). This is the A/B of two training runs
on held-out text, finer than generated accuracy on a few dozen samples.

    python -m bench.memory_gain --adapters comet_core/adapters/smollm2.safetensors,runs/s3/adapter.safetensors
    python -m bench.memory_gain --adapters runs/a/adapter.safetensors,runs/b/adapter.safetensors \
        --tasks fact,recall --lengths 256,1024 --samples 24 --no-window
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch


def measure(adapter: str, tasks: list[str], lengths: list[int], samples: int, precision: str,
            seed: int, model_spec: str | None = None, in_window: bool = True) -> list[dict]:
    from comet_core.engine import load
    from comet_core.evaluate import window as full_window
    from comet_core.tasks import make_sample
    from comet_core.train.samples import Encoded, encode
    from comet_core.train.trainer import sample_loss

    engine = load(model_spec, precision, adapter)
    model, tok, cfg = engine.model, engine.tok, engine.model.cfg
    window = full_window(engine)  # as comet_core.evaluate's full attention
    rows = []
    with torch.no_grad():
        for task in tasks:
            for n in lengths:
                for i in range(samples):
                    rng = random.Random(f"{seed}/{task}/{n}/{i}")
                    depth = i / max(1, samples - 1)
                    s = make_sample(task, tok, n, rng, "eval", depth=depth)
                    e = encode(s, tok, cfg, rng)
                    nt = e.n_target
                    mem, exact = sample_loss(model, e)
                    none, _ = sample_loss(model, Encoded([], e.live, nt))
                    row = {"adapter": adapter, "task": task, "length": n, "sample": i, "depth": depth,
                           "memory": mem.item() / nt, "no_memory": none.item() / nt, "exact": exact}
                    if in_window and n + len(e.live) <= window:
                        full, _ = sample_loss(model, Encoded([], sum(e.chunks, []) + e.live, nt))
                        row["in_window"] = full.item() / nt
                    rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["adapter"], r["task"], r["length"]) for r in rows}, key=lambda k: (k[1], k[2], k[0]))
    for a, t, n in keys:
        rs = [r for r in rows if (r["adapter"], r["task"], r["length"]) == (a, t, n)]
        m = {k: statistics.mean(r[k] for r in rs) for k in ("memory", "no_memory")}
        win = [r["in_window"] for r in rs if "in_window" in r]
        out.append({"adapter": a, "task": t, "length": n, "n": len(rs), **m,
                    "in_window": statistics.mean(win) if win else None, "gain": m["no_memory"] - m["memory"],
                    "exact": statistics.mean(r["exact"] for r in rs)})
    return out


def paired(rows: list[dict]) -> list[dict]:
    """Each adapter after the first against the first, sample by sample: mean and standard error of
    (its memory loss - the first adapter's memory loss) per task and length."""
    adapters = list(dict.fromkeys(r["adapter"] for r in rows))
    first = {(r["task"], r["length"], r["sample"]): r["memory"] for r in rows if r["adapter"] == adapters[0]}
    out = []
    for a in adapters[1:]:
        by_key: dict[tuple[str, int], list[float]] = {}
        for r in rows:
            if r["adapter"] == a:
                by_key.setdefault((r["task"], r["length"]), []).append(r["memory"] - first[r["task"], r["length"],
                                                                                            r["sample"]])
        for (t, n), d in sorted(by_key.items()):
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
            out.append({"adapter": a, "base": adapters[0], "task": t, "length": n, "n": len(d),
                        "diff": statistics.mean(d), "se": se})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--adapters", default="comet_core/adapters/smollm2.safetensors")
    ap.add_argument("--tasks", default="passkey,recall")
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-window", action="store_true",
                    help="skip the in-window loss (one of three forward passes per sample)")
    ap.add_argument("--out", default="bench/results/memory_gain.json")
    a = ap.parse_args(argv)
    t0 = time.time()
    rows = []
    for adapter in a.adapters.split(","):
        rows += measure(adapter, a.tasks.split(","), [int(x) for x in a.lengths.split(",")], a.samples,
                        a.precision, a.seed, a.model, not a.no_window)
    summary = summarize(rows)
    print(f"{'task':8} {'tokens':>6} {'memory':>7} {'no mem':>7} {'window':>7} {'gain':>6} {'exact':>6}  adapter")
    for s in summary:
        win = f"{s['in_window']:7.3f}" if s["in_window"] is not None else f"{'-':>7}"
        print(f"{s['task']:8} {s['length']:6d} {s['memory']:7.3f} {s['no_memory']:7.3f} {win} {s['gain']:6.3f} "
              f"{s['exact']:6.0%}  {s['adapter']}")
    pairs = paired(rows)
    if pairs:
        print(f"\npaired: memory loss minus {pairs[0]['base']}'s on the same samples (nats per answer token)")
        for d in pairs:
            print(f"{d['task']:8} {d['length']:6d} {d['diff']:+7.3f} ± {d['se']:.3f}  (n={d['n']})  {d['adapter']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "precision": a.precision, "seconds": round(time.time() - t0),
                                       "summary": summary, "paired": pairs, "rows": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
