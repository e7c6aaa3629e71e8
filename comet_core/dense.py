"""Dense weights for one layer visit: quantised linears run many-row matmuls as one bf16 GEMM.

Reading pushes many rows through each layer (a chunk is ~670 positions; a layer-major block of k chunks
visits each layer k times in a row). bitsandbytes' NF4 CPU kernel and our Int8Linear dequantise inside
every call; dequantising the layer's weights once per visit and running torch's dense GEMM is faster
(SmolLM2, one layer over a 673-row chunk, 2 cores: bnb 18.1 ms; dequantise ~0.7 ms + bf16 GEMM 11.4 ms).
Only one layer's dense weights (~7 MB for SmolLM2 in bf16) are alive at a time, plus an unpacked copy
of the NF4 weights (bnb's packed layout takes 10x longer to dequantise: +53 MB for SmolLM2).

A LoRA-wrapped linear gets W + (alpha/r) B A folded once per visit as well (two small fp32 matmuls and
their casts per call saved); for a bf16 backbone that is the only change. Calls with few rows (decoding
one token) keep the quantised kernel and the separate LoRA branch. Inference only: `read()` and
`live()` use it when autograd is off, so a checkpointed training step never mixes the two kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 64  # fewer rows: the quantised kernel is as fast and needs no dequantised copy


def dequantized(m: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """The dense [out, in] weight of a quantised linear (NF4 or Int8Linear), or None for other modules."""
    from .loading import Int8Linear

    if isinstance(m, Int8Linear):
        return m.dequantized(dtype)
    if type(m).__name__ != "Linear4bit":  # bitsandbytes is imported only when a 4-bit model is loaded
        return None
    import bitsandbytes.functional as bf

    src = getattr(m, "_comet_nf4", None)
    if src is None:  # bnb repacks NF4 weights in place for its AVX512 kernel; unpacking costs 10x a dequantisation,
        qw, qs = m.weight.data, m.weight.quant_state  # so an unpacked copy is kept (+0.5 byte per weight)
        if getattr(qs, "packing_format_for_cpu", False):
            qw, qs = bf._convert_weight_packed_for_cpu_inverse(qw.clone(), copy.deepcopy(qs))
        src = m._comet_nf4 = (qw, qs)
    return bf.dequantize_4bit(*src).to(dtype)


def _forward(m: nn.Module, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.numel() // x.shape[-1] < MIN_ROWS:
        return type(m).forward(m, x)
    b = getattr(m, "base", m).bias
    bias = None if b is None else b.to(w.dtype)
    return F.linear(x.to(w.dtype), w, bias).to(x.dtype)


def merged(m: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """The dense weight of a LoRA-wrapped linear with the LoRA folded in, W + (alpha/r) B A, or None."""
    from .lora import LoRALinear

    if not isinstance(m, LoRALinear):
        return None
    w = dequantized(m.base, torch.float32)
    w = m.base.weight.float() if w is None else w
    return (w + m.scale * (m.B.float() @ m.A.float())).to(dtype)


@contextmanager
def dense_weights(layer: nn.Module, dtype: torch.dtype = torch.bfloat16) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every quantised or LoRA-wrapped linear inside `layer` computes with its dense
    weight (dequantised, LoRA folded in) made once. Yields those weights by module name
    ("self_attn.q_proj": [out, in]) for callers that run the layer's maths themselves (fused.py)."""
    mods, inside_lora, weights = [], set(), {}
    for name, m in layer.named_modules():
        if id(m) in inside_lora:
            continue
        w = merged(m, dtype)
        if w is not None:
            inside_lora.add(id(m.base))
        else:
            w = dequantized(m, dtype)
        if w is not None:
            m.forward = partial(_forward, m, w)  # instance attribute: shadows the class's forward
            mods.append(m)
            weights[name] = w
    try:
        yield weights
    finally:
        for m in mods:
            del m.forward
