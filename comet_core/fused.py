"""The reading layer visit as one compiled function (torch.compile, inductor): prefix.py's computation
written on plain tensors, so inductor fuses the RMSNorms, RoPE, SiLU-gate and residual adds around the
GEMMs and the Python of the Hugging Face layer disappears from the hot loop.

Same maths as `prefix.layer_with_prefix` (llama / qwen2 / qwen3: RMSNorm in fp32, rotate-half RoPE, causal
sdpa with grouped KV heads, SiLU-gated MLP); the weights are the layer visit's dense weights (dense.py:
dequantised, LoRA folded in), passed as arguments, so one compiled graph serves every layer and every
chunk size (dynamic shapes). Inference only.

Off by default: it does not pay for itself on ordinary reads. Measured on a 2-core Xeon (AMX), 4bit,
SmolLM2: compiling takes ~33 s the first time and ~11 s in every later process (inductor's on-disk cache
warm); its reading speed was -9% to +14% of the eager path's in three runs (this VM's run-to-run noise),
so even at its best it repays the 11 s only past ~100k tokens. Switch it on for very long reads with
COMET_COMPILE=1 (or `CometModel.compile = True`); bench/experiments.py measures it
(variant `compile`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # qwen2 / qwen3 use the same

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def enabled() -> bool:
    """COMET_COMPILE=1 switches compiling on (inductor needs a C++ compiler; torch checks when it first runs)."""
    return os.environ.get("COMET_COMPILE", "0") == "1"


def supported(layer: nn.Module) -> bool:
    """A llama-style layer this module reproduces: RMSNorms, SiLU MLP, no sliding window or extra norms."""
    attn, mlp = layer.self_attn, layer.mlp
    act = getattr(getattr(attn, "config", None), "hidden_act", "silu")
    return act == "silu" and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) \
        and hasattr(layer, "post_attention_layernorm") and not hasattr(layer, "pre_feedforward_layernorm")


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The Hugging Face RMSNorm: normalise in fp32, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def _lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.to(w.dtype), w, None if b is None else b.to(w.dtype)).to(x.dtype)


def layer_fn(x: torch.Tensor, p: int, cos: torch.Tensor, sin: torch.Tensor, w: list[torch.Tensor | None],
             eps: float, n_heads: int, n_kv: int, head_dim: int, scaling: float) -> torch.Tensor:
    """x = [prefix; body] [B, S, d] -> the layer's body output [B, S-p, d].

    w = [input_norm, q, k, v, o, gate, up, down, post_norm, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm]
    (biases and q/k norms None where the family has none)."""
    ln1, wq, wk, wv, wo, wg, wu, wd, ln2, bq, bk, bv, bo, qn, kn = w
    b, s, _ = x.shape
    h = _rms(x, ln1, eps)
    q = _lin(h, wq, bq).view(b, s, n_heads, head_dim)
    k = _lin(h, wk, bk).view(b, s, n_kv, head_dim)
    v = _lin(h, wv, bv).view(b, s, n_kv, head_dim).transpose(1, 2)
    if qn is not None:  # qwen3
        q, k = _rms(q, qn, eps), _rms(k, kn, eps)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [B, H, S, hd]
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                       enable_gqa=n_heads != n_kv)  # [B, Hq, S, hd]
    y = x[:, p:] + _lin(o[:, :, p:].transpose(1, 2).reshape(b, s - p, -1), wo, bo)
    m = _rms(y, ln2, eps)
    return y + _lin(F.silu(_lin(m, wg, None)) * _lin(m, wu, None), wd, None)


_compiled = None


def compiled():
    """layer_fn compiled once per process (inductor's on-disk cache makes later processes quick)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(layer_fn, dynamic=True)
    return _compiled


def layer_weights(layer: nn.Module, dense: dict[str, torch.Tensor]) -> tuple[list, dict]:
    """The arguments of layer_fn for `layer`, given its visit's dense weights {module name: [out, in]}."""
    attn = layer.self_attn

    def bias(name: str) -> torch.Tensor | None:
        m = layer.get_submodule(name)
        return getattr(getattr(m, "base", m), "bias", None)

    def norm(name: str) -> torch.Tensor | None:
        return getattr(attn, name).weight if hasattr(attn, name) else None

    # a linear the visit did not densify is plain (unquantised, no LoRA): its own weight
    wq, wk, wv, wo, wg, wu, wd = (dense[n] if n in dense else layer.get_submodule(n).weight for n in PROJ)
    w = [layer.input_layernorm.weight, wq, wk, wv, wo, wg, wu, wd, layer.post_attention_layernorm.weight,
         bias(PROJ[0]), bias(PROJ[1]), bias(PROJ[2]), bias(PROJ[3]), norm("q_norm"), norm("k_norm")]
    cfg = attn.config
    eps = layer.input_layernorm.variance_epsilon
    hints = {"eps": eps, "n_heads": cfg.num_attention_heads, "n_kv": cfg.num_key_value_heads,
             "head_dim": attn.head_dim, "scaling": attn.scaling}
    return w, hints
