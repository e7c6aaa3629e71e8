"""Engine-optimisation experiments: reading speed of variants of the engine on the same loaded model and text.

Variants (each applied around one read, then undone; the engine's files are not changed):
  base           comet_core as it is (Reader block 1)
  block4         Reader(block=4): four chunks layer-major per sweep
  threads1       torch.set_num_threads(1)
  skip_slots     the memory slots' outputs are discarded by the next layer, so compute o_proj, the MLP and
                 the residuals only for the body rows (slots still give keys/values; queries of all rows
                 are kept so that attention stays plain causal sdpa)
  dequant        4-bit linears on many rows: dequantise the layer's NF4 weights to bf16 once per layer
                 visit and use the dense bf16 GEMM (one layer's weights, ~7 MB, live at a time)
  dequant_block4 the same with Reader(block=4): one dequantisation serves four chunks
  sink_cache     the sink token's per-layer states computed once, not at every read() call
  all_block4     skip_slots + dequant + sink_cache with Reader(block=4)
Every patched variant is checked against base on the same text: the memory states must agree.

    python -m bench.experiments            # all variants, ~5 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import copy
import inspect
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import common as C


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def body_only_layer(layer, x: torch.Tensor, n_mem: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A llama / qwen2 / qwen3 decoder layer over x = [slots; body] (positions 0..S-1, causal) that returns
    only the body rows: the slots' rows skip o_proj, the MLP and the residual adds."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    h = layer.input_layernorm(x)
    b, s, _ = h.shape
    shape = (b, s, -1, attn.head_dim)
    q, k, v = attn.q_proj(h).view(shape), attn.k_proj(h).view(shape), attn.v_proj(h).view(shape)
    if hasattr(attn, "q_norm"):  # qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, scale=attn.scaling,
                                       enable_gqa=q.shape[1] != k.shape[1])
    o = o[:, :, n_mem:].transpose(1, 2).reshape(b, s - n_mem, -1)
    y = x[:, n_mem:] + attn.o_proj(o)
    return y + layer.mlp(layer.post_attention_layernorm(y))


@contextmanager
def skip_slots(comet):
    """CometModel.run_layer for reading (no cache): the prefix rows (sink, memory slots) skip o_proj and MLP."""
    from comet_core.model import CometModel

    orig = CometModel.run_layer
    sig = inspect.signature(orig)

    def run_layer(self, *args, **kwargs):
        a = sig.bind(self, *args, **kwargs)
        a.apply_defaults()
        kw = a.arguments
        prefix = [kw.get(k) for k in ("sink", "mem") if kw.get(k) is not None]
        if not prefix or kw.get("cache") is not None or kw.get("start", 0):
            return orig(*a.args, **a.kwargs)
        x = torch.cat([*prefix, kw["body"]], dim=1)
        cos, sin = self.rope(x.shape[1])
        return body_only_layer(self.layers[kw["l"]], x, x.shape[1] - kw["body"].shape[1], cos, sin)

    CometModel.run_layer = run_layer
    try:
        yield
    finally:
        CometModel.run_layer = orig


@contextmanager
def dequant(comet, min_rows: int = 64):
    """NF4 linears on >= min_rows rows: F.linear with the layer's weights dequantised to bf16, cached while the
    same layer runs (so Reader(block=k) dequantises once per k chunks)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    mods = {}
    for l, layer in enumerate(comet.layers):
        for m in layer.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                qs = m.weight.quant_state
                if getattr(qs, "packing_format_for_cpu", False):  # repacked for the AVX512 kernel: undo (a copy)
                    qw, st = bf._convert_weight_packed_for_cpu_inverse(m.weight.data.clone(), copy.deepcopy(qs))
                else:
                    qw, st = m.weight.data, qs
                mods[m] = (l, qw, st)
    cache: dict = {"layer": None}
    orig = bnb.nn.Linear4bit.forward

    def forward(self, x):
        src = mods.get(self)
        if src is None or x.numel() // x.shape[-1] < min_rows:
            return orig(self, x)
        l, qw, st = src
        if cache["layer"] != l:
            cache.clear()
            cache["layer"] = l
        w = cache.get(self)
        if w is None:
            w = cache[self] = bf.dequantize_4bit(qw, st).to(torch.bfloat16)
        return F.linear(x.to(torch.bfloat16), w).to(x.dtype)

    bnb.nn.Linear4bit.forward = forward
    try:
        yield
    finally:
        bnb.nn.Linear4bit.forward = orig


@contextmanager
def sink_cache(comet):
    """Compute the sink token's per-layer states once (they do not depend on the text), not per read()."""
    from comet_core.model import CometModel

    orig = getattr(CometModel, "sink_states", None)
    if orig is None:  # an engine without a sink token
        yield
        return
    memo: dict = {}

    def sink_states(self, batch: int = 1):
        key = (id(self), batch)
        if key not in memo:
            memo[key] = orig(self, batch)
        return memo[key]

    CometModel.sink_states = sink_states
    try:
        yield
    finally:
        CometModel.sink_states = orig


@contextmanager
def _all(comet):
    with skip_slots(comet), dequant(comet), sink_cache(comet):
        yield


VARIANTS: dict[str, tuple[int, Callable]] = {  # name -> (block, context factory(comet))
    "base": (1, lambda m: ExitStack()),
    "block4": (4, lambda m: ExitStack()),
    "threads1": (1, lambda m: threads(1)),
    "skip_slots": (1, skip_slots),
    "dequant": (1, dequant),
    "dequant_block4": (4, dequant),
    "sink_cache": (1, sink_cache),
    "all_block4": (4, _all),
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
        s = C.load_comet(p, prec)
        C.warm_up(s.comet, s.tok, C.prose_pieces(text, seed=9), 4)
        best: dict[str, float] = {}
        states: dict[str, object] = {}
        for _ in range(a.rounds):
            for name in names:
                block, ctx = VARIANTS[name]
                with torch.no_grad(), ctx(s.comet):
                    C.read(s.comet, s.tok, s.comet.cfg.chunk_size * block, C.prose_pieces(text, seed=8), block)
                    t0 = time.perf_counter()
                    r = C.read(s.comet, s.tok, n, C.prose_pieces(text, seed=1), block)
                    dt = time.perf_counter() - t0
                best[name] = max(best.get(name, 0.0), r.tokens / dt)
                states[name] = r.state
        base = best.get("base")
        rows = []
        for name in names:
            same = "base" in states and states["base"].chunks == states[name].chunks
            diff = state_diff(states["base"], states[name]) if same else None
            rows.append([name, VARIANTS[name][0], best[name], f"{best[name] / base - 1:+.1%}" if base else None, diff])
        C.print_table(f"{prec}: reading {n:,} tokens, best of {a.rounds} (config {s.comet.cfg.settings()})",
                      ["variant", "block", "tokens/s", "vs base", "max rel. state diff vs base"], rows)
        out["precisions"][prec] = {r[0]: {"block": r[1], "tok_s": r[2], "vs_base": r[3], "state_diff": r[4]}
                                   for r in rows}
        del s
    if warn:
        print("WARNING:", warn)
    path = C.write_json(a.json_out, "experiments.json", out)
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
