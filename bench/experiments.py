"""Engine optimisations, measured: reading speed with each of the engine's optimisations switched off.

The engine (comet_core) reads in blocks of chunks, with three optimisations that came out of this script's
prototypes, and has a fourth that is off by default (its gain was within the noise, its compile time 11-33 s):
  kv_only     the memory slots and the sink only give keys/values (comet_core/prefix.py)
  dense       quantised weights dequantised to bf16 (LoRA folded in) once per layer visit (comet_core/dense.py)
  sink_cache  the sink token's per-layer states computed once, not at every read() call
  compile     the prefix layer as one torch.compile'd function (comet_core/fused.py; COMET_COMPILE=1)
Variants (each applied around one read, then undone; the engine's files are not changed):
  base              the engine as shipped (Reader(block=CPU_BLOCK): 4 chunks layer-major per sweep, as the
                    CLI on a CPU)
  block1            Reader(block=1): one chunk at a time (each layer's weights dequantised per chunk)
  threads1          torch.set_num_threads(1)
  no_kv_only        the stock decoder layer over every row (slots get queries, o_proj and MLP)
  no_dense          the quantised kernels inside every call
  no_sink_cache     the sink's states recomputed at every read() call
  compile           the prefix layer compiled (fused.py), as COMET_COMPILE=1; its compile time is in the
                    warm-up, not in the timed read
  none              the three off, block 1: the engine before these optimisations
Every variant is checked against base on the same text: the memory states must agree (up to rounding:
the dense GEMM and the quantised kernel round differently).

    python -m bench.experiments            # all variants, ~5 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch

from bench import common as C
from comet_core.reader import CPU_BLOCK


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def compiled(comet, on: bool = True):
    """The prefix layer as fused.py's compiled function (on) or in eager PyTorch, prefix.py (off)."""
    old = comet.compile
    comet.compile = on
    try:
        yield
    finally:
        comet.compile = old


@contextmanager
def no_kv_only(comet):
    """The stock decoder layer over [prefix; body] (every row gets queries, o_proj and the MLP)."""
    import comet_core.model as engine

    def stock(layer, x, p, cos, sin):
        out = layer(x, attention_mask=None, position_embeddings=(cos, sin))
        return (out[0] if isinstance(out, tuple) else out)[:, p:]

    orig = engine.layer_with_prefix
    engine.layer_with_prefix = stock
    try:
        with compiled(comet, False):
            yield
    finally:
        engine.layer_with_prefix = orig


@contextmanager
def no_dense(comet):
    """The quantised kernels (bitsandbytes NF4, Int8Linear) dequantise inside every call."""
    from comet_core.model import CometModel

    orig = CometModel.dense
    CometModel.dense = lambda self, l: nullcontext()
    try:
        yield
    finally:
        CometModel.dense = orig


@contextmanager
def no_sink_cache(comet):
    """The sink token's per-layer states recomputed at every read() call."""
    from comet_core.model import CometModel

    orig = CometModel.sink_states

    def sink_states(self, batch: int = 1):
        self._sinks = None
        return orig(self, batch)

    CometModel.sink_states = sink_states
    try:
        yield
    finally:
        CometModel.sink_states = orig


@contextmanager
def none(comet):
    with no_kv_only(comet), no_dense(comet), no_sink_cache(comet), compiled(comet, False):
        yield


VARIANTS: dict[str, tuple[int, Callable]] = {  # name -> (block, context factory(comet))
    "base": (CPU_BLOCK, lambda m: ExitStack()),
    "block1": (1, lambda m: ExitStack()),
    "threads1": (CPU_BLOCK, lambda m: threads(1)),
    "no_kv_only": (CPU_BLOCK, no_kv_only),
    "no_dense": (CPU_BLOCK, no_dense),
    "no_sink_cache": (CPU_BLOCK, no_sink_cache),
    "compile": (CPU_BLOCK, compiled),
    "none": (1, none),
}


def state_diff(a, b) -> float:
    """Largest relative difference between two memory states' tensors."""
    worst = 0.0
    for x, y in zip(a.global_state + a.temp, b.global_state + b.temp, strict=True):
        if x is not None:
            worst = max(worst, ((x.float() - y.float()).abs().max() / (x.float().abs().max() + 1e-9)).item())
    return worst


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--tokens", default="8k", help="text tokens per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all variants (best kept)")
    a = ap.parse_args(argv)
    warn = C.other_load()
    p = C.model_params(a)
    n = C.parse_size(a.tokens)
    names = [v for v in a.variants.split(",") if v]
    out = {"benchmark": "experiments", "machine": C.machine(), "warning": warn,
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "precisions": {}}
    text = Path(a.text) if a.text else None
    for prec in [x for x in a.precisions.split(",") if x]:
        e = C.load_engine(p, prec)
        C.warm_up(e.model, e.tok, C.prose_pieces(text, seed=9), 4)
        best: dict[str, float] = {}
        states: dict[str, object] = {}
        for _ in range(a.rounds):
            for name in names:
                block, ctx = VARIANTS[name]
                with torch.no_grad(), ctx(e.model):
                    C.read(e.model, e.tok, e.model.cfg.chunk_size * block, C.prose_pieces(text, seed=8), block)
                    t0 = time.perf_counter()
                    r = C.read(e.model, e.tok, n, C.prose_pieces(text, seed=1), block)
                    dt = time.perf_counter() - t0
                best[name] = max(best.get(name, 0.0), r.tokens / dt)
                states[name] = r.state
        base = best.get("base")
        rows = []
        for name in names:
            same = "base" in states and states["base"].chunks == states[name].chunks
            diff = state_diff(states["base"], states[name]) if same else None
            rows.append([name, VARIANTS[name][0], best[name], f"{best[name] / base - 1:+.1%}" if base else None, diff])
        C.print_table(f"{prec}: reading {n:,} tokens, best of {a.rounds} (config {e.model.cfg.settings()})",
                      ["variant", "block", "tokens/s", "vs base", "max rel. state diff vs base"], rows)
        out["precisions"][prec] = {r[0]: {"block": r[1], "tok_s": r[2], "vs_base": r[3], "state_diff": r[4]}
                                   for r in rows}
        del e
    C.finish(a.json_out, "experiments.json", out)
    return out


if __name__ == "__main__":
    main()
