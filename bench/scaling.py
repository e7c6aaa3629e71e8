"""Scaling: read 4k ... 256k (and optionally 1M) tokens of real prose; time, tokens/s, peak RSS, state bytes.

One fresh child process per (precision, length): it loads the model, warms up (bnb repacking, first
chunks), resets the peak-RSS counter, then reads the text through comet_core.reader.Reader exactly as
the CLI does (streamed pieces, incremental tokenisation). A dense-bf16 baseline child times the same
backbone over plain 512-token chunks without memory, so the ratio is measured in the same run.

Pass criteria printed: time per token flat within +-10% from 16k up, reading peak RSS flat within +-5%
over all lengths; targets: >= 1,000 text tokens/s at 4bit, >= 70% of the dense-bf16 rate, 1M tokens in
<= 20 minutes (projected from the longest run when 1M is not measured), peak RSS <= 1 GB.

    python -m bench.scaling                       # 4k,16k,64k,256k at 4bit and bf16 (~25 min, free CPU)
    python -m bench.scaling --with-1m --precisions 4bit     # + 1M tokens (~20 min more)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import common as C
from comet_cli.plot import pyplot, save
from comet_core.reader import CPU_BLOCK


def child(p: dict) -> dict:
    pieces = C.prose_pieces(Path(p["text"]) if p.get("text") else None, p.get("piece_chars", 65536), seed=1)
    if p.get("kind") == "dense":
        e = C.load_engine(p, p["precision"], memory=False)
        C.reset_peak_rss()
        r = C.dense_rate(e.lm, e.tok, pieces, n_chunks=p.get("dense_chunks", 16), chunk=p.get("dense_chunk", 512))
        return {"kind": "dense", "precision": p["precision"], **r, "peak_rss_mb": C.peak_rss_mb()}
    t0 = time.perf_counter()
    e = C.load_engine(p, p["precision"])
    load_s, load_peak = time.perf_counter() - t0, C.peak_rss_mb()
    warm = C.warm_up(e.model, e.tok, pieces, p.get("block", 1))
    rss0 = C.rss_mb()
    reset = C.reset_peak_rss()
    r = C.read(e.model, e.tok, p["tokens"], pieces, block=p.get("block", 1),
               trace_every=max(1, p["tokens"] // e.model.cfg.chunk_size // 200))
    return {"kind": "comet", "precision": p["precision"], "block": p.get("block", 1), "target": p["tokens"],
            "tokens": r.tokens, "seconds": r.seconds, "tok_s": r.tok_s, "us_per_token": 1e6 / r.tok_s,
            "chunks": r.chunks, "state_bytes": r.state_bytes, "read_peak_rss_mb": C.peak_rss_mb() if reset else None,
            "rss_before_read_mb": rss0, "load_peak_rss_mb": load_peak, "load_s": load_s, "warmup_s": warm,
            "rss_end": C.rss_breakdown(), "config": e.model.cfg.settings(), "adapter": C.adapter_name(e),
            "trace": r.trace}


def criteria(rows: list[dict], dense_bf16: float | None) -> list[tuple[str, bool | None, str]]:
    """(criterion, pass?, detail) for each precision and the targets."""
    out = []
    for prec in sorted({r["precision"] for r in rows}):
        rs = sorted((r for r in rows if r["precision"] == prec), key=lambda r: r["tokens"])
        late = [r["us_per_token"] for r in rs if r["target"] >= 16 << 10]
        if len(late) >= 2:
            m = statistics.median(late)
            dev = max(abs(x / m - 1) for x in late)
            out.append((f"{prec}: time/token flat within ±10% from 16k", dev <= 0.10, f"max deviation {dev:.1%}"))
        peaks = [r["read_peak_rss_mb"] for r in rs if r["read_peak_rss_mb"]]
        if len(peaks) >= 2:
            m = statistics.median(peaks)
            dev = max(abs(x / m - 1) for x in peaks)
            out.append((f"{prec}: reading peak RSS flat within ±5%", dev <= 0.05, f"max deviation {dev:.1%}"))
        longest = rs[-1]
        if prec == "4bit":
            out.append(("4bit: >= 1,000 text tokens/s sustained", longest["tok_s"] >= 1000,
                        f"{longest['tok_s']:,.0f} tok/s over {longest['tokens']:,} tokens"))
            if dense_bf16:
                ratio = longest["tok_s"] / dense_bf16
                out.append(("4bit: >= 70% of dense-bf16 512-token forward", ratio >= 0.70,
                            f"{ratio:.0%} of {dense_bf16:,.0f} tok/s"))
            one_m = next((r for r in rs if r["target"] >= 1 << 20), None)
            if one_m:
                out.append(("4bit: 1M tokens in <= 20 min", one_m["seconds"] <= 1200,
                            f"{one_m['seconds'] / 60:.1f} min measured"))
            else:
                proj = (1 << 20) / longest["tok_s"]
                out.append(("4bit: 1M tokens in <= 20 min (projected)", proj <= 1200,
                            f"{proj / 60:.1f} min projected from {C.fmt_size(longest['target'])}"))
        worst = max(max(r["load_peak_rss_mb"], r["read_peak_rss_mb"] or 0) for r in rs)
        out.append((f"{prec}: peak RSS <= 1 GB at every length (load included)", worst <= 1024,
                    f"max {worst:,.0f} MiB"))
    return out


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for prec in sorted({r["precision"] for r in rows}):
        rs = sorted((r for r in rows if r["precision"] == prec), key=lambda r: r["tokens"])
        xs = [r["tokens"] for r in rs]
        line, = ax1.plot(xs, [r["seconds"] for r in rs], "o-", label=f"{prec} (runs)")
        tr = rs[-1]["trace"]  # the longest run, per chunk block: cumulative seconds
        if tr:
            ax1.plot([t[0] for t in tr], [t[1] for t in tr], "-", lw=0.8, alpha=0.6, color=line.get_color(),
                     label=f"{prec} (inside the {C.fmt_size(rs[-1]['target'])} run)")
            ax2.plot([t[0] for t in tr], [t[2] for t in tr], "-", lw=0.8, alpha=0.6, color=line.get_color(),
                     label=f"{prec} RSS inside the longest run")
        ax2.plot(xs, [r["read_peak_rss_mb"] for r in rs], "o-", color=line.get_color(),
                 label=f"{prec} peak RSS while reading")
        ax2.plot(xs, [r["load_peak_rss_mb"] for r in rs], "x:", color=line.get_color(),
                 label=f"{prec} peak RSS while loading")
    ax1.set(xscale="log", yscale="log", xlabel="text tokens read", ylabel="seconds", title="time (linear)")
    ax2.set(xscale="log", xlabel="text tokens read", ylabel="MiB", title="resident memory (flat)")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save(fig, path)


def main(argv: list[str] | None = None) -> dict | None:
    if C.child_main(argv, child):
        return None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap)
    ap.add_argument("--lengths", default="4k,16k,64k,256k", help="text tokens per run (k = 1024, M = 1024²)")
    ap.add_argument("--with-1m", action="store_true", help="add a 1M-token run (about 17-20 min per precision)")
    ap.add_argument("--block", type=int, default=CPU_BLOCK,
                    help="chunks per layer-major block, Reader(block=k) (default: the CLI's on a CPU)")
    ap.add_argument("--piece-chars", type=int, default=65536, help="characters per piece fed to the reader")
    ap.add_argument("--dense-chunks", type=int, default=16, help="512-token chunks in the dense baseline (0: skip)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default bench/results/scaling.png)")
    a = ap.parse_args(argv)
    lengths = C.parse_sizes(a.lengths) + ([1 << 20] if a.with_1m else [])
    precs = [x for x in a.precisions.split(",") if x]
    base = {**C.model_params(a), "block": a.block, "piece_chars": a.piece_chars}
    warn = C.other_load()
    t0 = time.time()
    dense = {}
    if a.dense_chunks:
        for prec in dict.fromkeys(["bf16", *precs]):
            dense[prec] = C.run_child("bench.scaling", {**base, "kind": "dense", "precision": prec,
                                                         "dense_chunks": a.dense_chunks})
            print(f"dense {prec}: {dense[prec]['tok_s']:,.0f} tok/s over 512-token chunks", flush=True)
    rows = []
    for prec in precs:
        for n in lengths:
            r = C.run_child("bench.scaling", {**base, "precision": prec, "tokens": n})
            rows.append(r)
            print(f"{prec} {C.fmt_size(n)}: {r['tokens']:,} tokens in {r['seconds']:.1f} s = {r['tok_s']:,.0f} tok/s,"
                  f" peak RSS {r['read_peak_rss_mb'] or 0:,.0f} MiB", flush=True)
    table = [[r["precision"], C.fmt_size(r["target"]), r["tokens"], r["seconds"], r["tok_s"], r["us_per_token"],
              r["read_peak_rss_mb"], r["load_peak_rss_mb"], r["state_bytes"] / C.MiB] for r in rows]
    C.print_table(f"Scaling (block {a.block}, {a.threads} threads, config {rows[0]['config']}, "
                  f"adapter {rows[0]['adapter'] or 'untrained'})",
                  ["precision", "length", "text tokens", "seconds", "tokens/s", "µs/token", "read peak RSS MiB",
                   "load peak RSS MiB", "state MiB"], table)
    if dense:
        C.print_table("Backbone alone, plain 512-token chunks, no memory (same run)",
                      ["precision", "tokens/s", "peak RSS MiB"],
                      [[k, v["tok_s"], v["peak_rss_mb"]] for k, v in dense.items()])
    crit = criteria(rows, dense.get("bf16", {}).get("tok_s"))
    C.print_table("Criteria", ["criterion", "result", "detail"], [[c, C.verdict(ok), d] for c, ok, d in crit])
    if warn:
        print("WARNING:", warn)
    payload = {"benchmark": "scaling", "machine": C.machine(), "args": vars(a) | {"text": str(a.text)},
               "warning": warn, "wall_s": time.time() - t0, "dense": dense, "runs": rows,
               "criteria": [{"criterion": c, "pass": ok, "detail": d} for c, ok, d in crit]}
    payload["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in payload["args"].items()}
    out = C.write_json(a.json_out, "scaling.json", payload)
    png = a.plot or out.with_suffix(".png")
    plot(rows, png)
    print(f"\nwrote {out} and {png}")
    return payload


if __name__ == "__main__":
    main()
