"""Profile reading: where the time goes (torch.profiler), grouped into kernels, layout copies, Python.

Reads a few chunks after a warm-up twice: once plain (the wall time), once under torch.profiler. The
ops' self times are grouped into categories; "outside torch ops" is the profiled wall time minus the ops'
self time: Python (reader, layouts, HF layer code), the tokenizer and the profiler's own cost.
Tokenisation is also timed on its own.

    python -m bench.profile_read --precisions 4bit --chunks 16    # ~1 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from bench import common as C
from comet_core.reader import CPU_BLOCK

CATEGORIES = (  # first match wins; matched against the op name
    ("4-bit (bitsandbytes: dequantise, few-row kernel)", ("bitsandbytes::", "gemv_4bit", "dequantize_4bit")),
    ("int8 GEMM", ("_weight_int8pack_mm",)),
    ("dense GEMM", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "mkldnn")),
    ("attention (sdpa)", ("scaled_dot_product", "flash_attention")),
    ("copies / layout (cat, index, to, copy)", ("aten::cat", "aten::index", "aten::copy_", "aten::_to_copy",
                                                "aten::to", "aten::clone", "aten::contiguous", "aten::embedding",
                                                "aten::slice", "aten::select", "aten::expand", "aten::view",
                                                "aten::reshape", "aten::transpose", "aten::empty", "aten::zeros",
                                                "aten::resize_", "aten::stack", "aten::unsqueeze", "aten::t")),
    ("norms / elementwise (RMSNorm, SiLU, RoPE, residual)", ("aten::",)),
)


def category(name: str) -> str:
    for cat, keys in CATEGORIES:
        if any(name.startswith(k) or k in name for k in keys):
            return cat
    return "other"


COMPONENTS = (  # (module, class, method, label): wrapped in record_function while profiling
    ("comet_core.model", "CometModel", "run_layer", "comet: decoder layer (run_layer: prefix + layer)"),
    ("comet_core.model", "CometModel", "embed_body", "comet: embed body"),
    ("comet_core.model", "CometModel", "memory_at", "comet: memory slots (global o_proj + cat)"),
    ("comet_core.memory", "GlobalMemoryNet", "forward", "comet: global memory net"),
    ("comet_core.memory", "TempMemoryNet", "forward", "comet: temp memory net"),
    ("comet_core.memory", "push_fifo", None, "comet: FIFO push"),
    ("comet_core.reader", "Reader", "encode", "comet: tokenizer"),
    ("comet_core.model", "CometModel", "read", "comet: model.read (whole block)"),
)


@contextmanager
def labelled():
    """Label the engine's components in the profile (their inclusive times), without editing the engine."""
    import importlib

    undo = []
    for mod_name, owner, method, label in COMPONENTS:
        mod = importlib.import_module(mod_name)
        target, name = (getattr(mod, owner), method) if method else (mod, owner)
        orig = getattr(target, name, None)
        if orig is None:
            continue

        def wrapped(*args, _orig=orig, _label=label, **kwargs):
            with record_function(_label):
                return _orig(*args, **kwargs)

        setattr(target, name, wrapped)
        undo.append((target, name, orig))
    if any(t.__name__ == "comet_core.memory" for t, _, _ in undo if hasattr(t, "__name__")):
        import comet_core.model as cm  # model.py imported push_fifo by name

        undo.append((cm, "push_fifo", cm.push_fifo))
        cm.push_fifo = importlib.import_module("comet_core.memory").push_fifo
    try:
        yield
    finally:
        for target, name, orig in reversed(undo):
            setattr(target, name, orig)


def tokenise_rate(tok, pieces, chars: int = 200_000) -> dict:
    text, n = "", 0
    while len(text) < chars:
        text += next(pieces)
    t0 = time.perf_counter()
    for i in range(0, len(text), 16384):  # the reader's window
        n += len(tok.encode(text[i:i + 16384], add_special_tokens=False))
    s = time.perf_counter() - t0
    return {"tokens": n, "seconds": s, "us_per_token": 1e6 * s / n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit")
    ap.add_argument("--chunks", type=int, default=16, help="chunks read per measurement")
    ap.add_argument("--block", type=int, default=CPU_BLOCK,
                    help="chunks per layer-major block (default: the CLI's on a CPU)")
    ap.add_argument("--top", type=int, default=20, help="ops listed")
    a = ap.parse_args(argv)
    warn = C.other_load()
    p = C.model_params(a)
    out = {"benchmark": "profile_read", "machine": C.machine(), "warning": warn,
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "precisions": {}}
    for prec in [x for x in a.precisions.split(",") if x]:
        e = C.load_engine(p, prec)
        pieces = C.prose_pieces(Path(a.text) if a.text else None, seed=3)
        n = a.chunks * e.model.cfg.chunk_size
        C.warm_up(e.model, e.tok, pieces, a.block)
        plain = C.read(e.model, e.tok, n, pieces, block=a.block)
        with labelled(), profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            r = C.read(e.model, e.tok, n, pieces, block=a.block)
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        comps = {e.key: e.cpu_time_total / 1e6 for e in events if e.key.startswith("comet:")}
        ops = [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in events if not e.key.startswith("comet:")]
        ops.sort(key=lambda o: -o[2])
        total_ops = sum(o[2] for o in ops)
        cats: dict[str, float] = {}
        for name, _, t in ops:
            cats[category(name)] = cats.get(category(name), 0.0) + t
        cats["outside torch ops (Python, tokenizer, profiler)"] = max(0.0, wall - total_ops)
        tokr = tokenise_rate(e.tok, pieces)
        C.print_table(f"{prec}: top ops by self time ({r.tokens:,} tokens, block {a.block}; profiled wall "
                      f"{wall:.2f} s, unprofiled {plain.seconds:.2f} s = {plain.tok_s:,.0f} tok/s)",
                      ["op", "calls", "self s", "share", "category"],
                      [[nm[:60], c, t, f"{t / wall:.1%}", category(nm)] for nm, c, t in ops[:a.top]])
        C.print_table(f"{prec}: time by category (share of the profiled wall time)", ["category", "seconds", "share"],
                      [[k, v, f"{v / wall:.1%}"] for k, v in sorted(cats.items(), key=lambda kv: -kv[1])])
        C.print_table(f"{prec}: engine components (inclusive time, nested: the decoder layers are inside "
                      "model.read)", ["component", "seconds", "share"],
                      [[k, v, f"{v / wall:.1%}"] for k, v in sorted(comps.items(), key=lambda kv: -kv[1])])
        print(f"tokenisation alone: {tokr['us_per_token']:.1f} µs/token = "
              f"{tokr['us_per_token'] * plain.tok_s / 1e6:.1%} of the reading time at {plain.tok_s:,.0f} tok/s")
        out["precisions"][prec] = {"tokens": r.tokens, "profiled_wall_s": wall, "unprofiled_s": plain.seconds,
                                   "unprofiled_tok_s": plain.tok_s, "categories": cats, "components": comps,
                                   "tokenise": tokr,
                                   "top_ops": [{"op": nm, "calls": c, "self_s": t} for nm, c, t in ops[:a.top]]}
        del e
    C.finish(a.json_out, "profile_read.json", out)
    return out


if __name__ == "__main__":
    main()
