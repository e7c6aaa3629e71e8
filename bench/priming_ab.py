"""Which answer layout learns to read memory: the question alone after the memory, or the unread tail too?

Trains one fresh adapter per priming length with the same seed, data and steps (`comet train`'s loop:
passkey, contexts of one full chunk plus a half-to-full second one, every needle in the full chunk), then
asks each the same held-out questions (eval split: text and wordings the training never saw) in the layout
it was trained with, at a length whose last chunk is partial (`--eval-tokens`, default 1.75 chunks):
- priming 0: both chunks are read into memory; the live chunk is the question;
- priming c: the full chunk is read into memory; the rest of the text stays live before the question.
Reported: the training curve of each, and the held-out accuracy of generated answers with the needle in
the first chunk (depths 0.1 and 0.35: read from memory in both layouts) and near the end (depth 0.9: in
the live text with priming c, in memory with priming 0).

    python -m bench.priming_ab --steps 150                    # ~35 min on 2 cores, nothing else running
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEPTHS = (0.1, 0.35, 0.9)


def run(priming: int, steps: int, out: Path, a: argparse.Namespace) -> dict:
    from comet_core.engine import load
    from comet_core.evaluate import heldout_accuracy
    from comet_core.train.args import TrainArgs
    from comet_core.train.trainer import train

    args = TrainArgs(out=str(out), model=a.model, chunk_size=a.chunk_size, priming=priming, steps=steps,
                     min_chunks=2, max_chunks=2, tasks="passkey:1", in_memory=1.0, eval_every=0,
                     save_every=steps, seed=a.seed)
    t0 = time.time()
    last = train(args)
    train_s = time.time() - t0
    engine = load(a.model, "bf16", out / "adapter.safetensors", threads=a.threads)
    n = a.eval_tokens or a.chunk_size * 7 // 4
    acc = {d: heldout_accuracy(engine, "passkey", n, a.samples, depth=d) for d in DEPTHS}
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    curve = [round(sum(r["loss"] for r in log[i:i + 10]) / len(log[i:i + 10]), 3) for i in range(0, len(log), 10)]
    return {"priming": priming, "steps": steps, "train_s": round(train_s), "final_loss": round(last["loss"], 3),
            "loss_every_10_steps": curve, "eval_tokens": n,
            "heldout_acc": {str(d): acc[d][0] for d in DEPTHS}, "answers": {str(d): acc[d][1] for d in DEPTHS}}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--chunk-size", type=int, default=256, help="c")
    ap.add_argument("--steps", type=int, default=150, help="training steps per layout (4 samples each)")
    ap.add_argument("--samples", type=int, default=16, help="held-out questions per layout and depth")
    ap.add_argument("--eval-tokens", type=int, default=None, help="held-out context length (default 1.75 c)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default="bench/results/priming_ab.json")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for priming in (0, a.chunk_size):
            r = run(priming, a.steps, Path(tmp) / f"p{priming}", a)
            rows.append(r)
            accs = ", ".join(f"depth {d}: {v:.2f}" for d, v in r["heldout_acc"].items())
            print(f"priming {priming:4d}: {r['steps']} steps in {r['train_s']} s, training loss every 10 steps "
                  f"{r['loss_every_10_steps']}; held-out accuracy ({a.samples} questions each) {accs}", flush=True)
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps({"args": vars(a), "runs": rows}, indent=1))
    print(f"wrote {a.json_out}")
    return rows


if __name__ == "__main__":
    main()
