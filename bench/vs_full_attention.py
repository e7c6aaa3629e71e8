"""Versus full attention: the same backbone through plain transformers (one bf16 forward over the whole text,
with its KV cache, no logits but the last) next to comet reading the same text, at 1k ... 8k tokens (the
model's window), and comet alone beyond it.

Each point runs in a fresh child process; time and peak RSS are measured after a warm-up, KV bytes are the
cache's tensors (comet: its memory state). Full attention cannot go past the model's position window
(SmolLM2: 8,192): those points are reported as impossible, not run.

    python -m bench.vs_full_attention             # ~6 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench import common as C
from bench import scaling
from comet_cli.plot import pyplot, save


def full_child(p: dict) -> dict:
    from transformers import DynamicCache

    e = C.load_engine(p, p["precision"], memory=False)
    lm, tok = e.lm, e.tok
    pieces = C.prose_pieces(Path(p["text"]) if p.get("text") else None, seed=1)
    ids = torch.tensor([C.token_chunks(tok, pieces, p["tokens"])])
    with torch.no_grad():
        lm(input_ids=ids[:, :256], cache=DynamicCache(config=lm.config), use_cache=True, logits_to_keep=1)
        C.reset_peak_rss()
        cache = DynamicCache(config=lm.config)
        t0 = time.perf_counter()
        lm(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        seconds = time.perf_counter() - t0
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return {"kind": "full", "precision": p["precision"], "tokens": ids.shape[1], "seconds": seconds,
            "tok_s": ids.shape[1] / seconds, "read_peak_rss_mb": C.peak_rss_mb(), "kv_bytes": kv,
            "window": lm.config.max_position_embeddings}


def child(p: dict) -> dict:
    return full_child(p) if p.get("kind") == "full" else scaling.child(p)


def crossing(xs: list[int], a: list[float], b: list[float]) -> float | None:
    """The x (log-interpolated) where curve a first rises above curve b, None if it never does."""
    for i in range(1, len(xs)):
        d0, d1 = a[i - 1] - b[i - 1], a[i] - b[i]
        if d0 <= 0 < d1:
            f = -d0 / (d1 - d0)
            return math.exp(math.log(xs[i - 1]) + f * (math.log(xs[i]) - math.log(xs[i - 1])))
    return None


def plot(full: list[dict], comet: dict[str, list[dict]], window: int, path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    fx = [r["tokens"] for r in full]
    ax1.plot(fx, [r["seconds"] for r in full], "s-", color="black", label="full attention (bf16)")
    ax2.plot(fx, [r["read_peak_rss_mb"] for r in full], "s-", color="black", label="full attention (bf16)")
    for prec, rs in comet.items():
        ax1.plot([r["tokens"] for r in rs], [r["seconds"] for r in rs], "o-", label=f"comet {prec}")
        ax2.plot([r["tokens"] for r in rs], [r["read_peak_rss_mb"] for r in rs], "o-", label=f"comet {prec}")
    for ax in (ax1, ax2):
        ax.axvline(window, ls="--", color="red", lw=1)
        ax.text(window, ax.get_ylim()[1] * 0.95, f" window {window:,}", color="red", fontsize=8, va="top")
        ax.set(xscale="log", xlabel="text tokens")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax1.set(ylabel="seconds", title="time to read")
    ax2.set(ylabel="MiB", title="peak RSS while reading")
    save(fig, path)


def main(argv: list[str] | None = None) -> dict | None:
    if C.child_main(argv, child):
        return None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit,bf16")
    ap.add_argument("--full-precision", default="bf16", help="precision of the plain transformers run")
    ap.add_argument("--lengths", default="1k,2k,4k,8k", help="text tokens (full attention and comet)")
    ap.add_argument("--comet-extra", default="16k,32k", help="comet-only lengths beyond the window")
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args(argv)
    base = C.model_params(a)
    lengths, extra = C.parse_sizes(a.lengths), C.parse_sizes(a.comet_extra)
    warn = C.other_load()
    t0 = time.time()
    full, window = [], None
    for n in lengths:
        if window is not None and n > window:
            print(f"full attention {C.fmt_size(n)}: impossible, beyond the {window:,}-position window", flush=True)
            continue
        r = C.run_child("bench.vs_full_attention", {**base, "kind": "full", "precision": a.full_precision,
                                                    "tokens": n})
        window = r["window"]
        if n > window:  # the first point already exceeded it: report, do not trust
            r["beyond_window"] = True
        full.append(r)
        print(f"full {C.fmt_size(n)}: {r['seconds']:.2f} s, {r['read_peak_rss_mb']:,.0f} MiB, "
              f"KV {r['kv_bytes'] / C.MiB:.0f} MiB", flush=True)
    comet: dict[str, list[dict]] = {}
    for prec in [x for x in a.precisions.split(",") if x]:
        for n in sorted(set(lengths + extra)):
            r = C.run_child("bench.vs_full_attention", {**base, "precision": prec, "tokens": n})
            r.pop("trace", None)
            comet.setdefault(prec, []).append(r)
            print(f"comet {prec} {C.fmt_size(n)}: {r['seconds']:.2f} s, {r['read_peak_rss_mb'] or 0:,.0f} MiB",
                  flush=True)
    window = window or 0
    rows = []
    for n in sorted(set(lengths + extra)):
        f = next((r for r in full if r["tokens"] == n), None)
        row = [C.fmt_size(n), f["seconds"] if f else "beyond window" if n > window else None,
               f["read_peak_rss_mb"] if f else None, f["kv_bytes"] / C.MiB if f else None]
        for prec in comet:
            c = next((r for r in comet[prec] if r["target"] == n), None)
            row += [c["seconds"], c["read_peak_rss_mb"], c["state_bytes"] / C.MiB] if c else [None] * 3
        rows.append(row)
    cols = ["tokens", f"full {a.full_precision} s", "full peak RSS MiB", "full KV MiB"]
    for prec in comet:
        cols += [f"comet {prec} s", f"comet {prec} RSS MiB", f"comet {prec} state MiB"]
    C.print_table(f"Full attention ({a.full_precision}, plain transformers, one forward + KV cache) vs comet",
                  cols, rows)
    crosses = {}
    fx = [r["tokens"] for r in full]
    for prec, rs in comet.items():
        by = {r["target"]: r for r in rs}
        if all(n in by for n in fx) and len(fx) >= 2:
            crosses[prec] = {
                "time": crossing(fx, [r["seconds"] for r in full], [by[n]["seconds"] for n in fx]),
                "rss": crossing(fx, [r["read_peak_rss_mb"] for r in full], [by[n]["read_peak_rss_mb"] for n in fx])}
            for what, x in crosses[prec].items():
                print(f"comet {prec} beats full attention on {what} from "
                      + (f"~{x:,.0f} tokens" if x else "no measured length (or from the first)"))
    print(f"full attention stops at its window: {window:,} positions; comet read up to "
          f"{max(r['tokens'] for rs in comet.values() for r in rs):,} tokens here (any length: see scaling)")
    if warn:
        print("WARNING:", warn)
    payload = {"benchmark": "vs_full_attention", "machine": C.machine(), "warning": warn,
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
               "wall_s": time.time() - t0, "window": window, "full": full, "comet": comet, "crossings": crosses}
    out = C.write_json(a.json_out, "vs_full_attention.json", payload)
    png = a.plot or out.with_suffix(".png")
    plot(full, comet, window, png)
    print(f"\nwrote {out} and {png}")
    return payload


if __name__ == "__main__":
    main()
