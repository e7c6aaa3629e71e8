"""A stock decoder layer over [prefix; body] that computes outputs for the body rows only.

The prefix is the sink token and the memory slots. Their outputs at layer l are thrown away (layer l+1
overwrites the slots; the sink's states are fixed), so their o_proj, MLP and residuals are wasted work
(an optimisation the layout allows: slot outputs are never used). For P prefix rows and N body rows this computes

    h = input_layernorm([prefix; body])                             [B, P+N, d]
    q, k, v = q_proj(h), k_proj(h), v_proj(h)  (+ q/k_norm, qwen3), rope at positions 0..P+N-1
    o = causal sdpa(q, k, v)[P:]                                    [B, N, d_attn] body rows only
    y = body + o_proj(o);  y = y + mlp(post_attention_layernorm(y)) [B, N, d]

which is the stock layer's computation restricted to the body rows (llama, qwen2, qwen3 share it).
The prefix rows keep their queries: torch's CPU flash attention skips the masked half of a causal
square, but not of the [N, P+N] mask that body-only queries need (SmolLM2, 673 rows: 6.4 ms causal vs
7.7 ms masked per layer, more than the 81 rows' queries cost). For SmolLM2 at the default settings 81
of 673 rows skip o_proj and the MLP (bench/experiments.py measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # qwen2 / qwen3 use the same


def layer_with_prefix(layer: nn.Module, x: torch.Tensor, p: int, cos: torch.Tensor,
                      sin: torch.Tensor) -> torch.Tensor:
    """x = [prefix; body] [B, S=P+N, d], p = P, cos/sin [1, S, head_dim] -> the layer's body output [B, N, d]."""
    attn = layer.self_attn
    b, s, _ = x.shape
    n = s - p
    h = layer.input_layernorm(x)  # [B, S, d]
    shape = (b, s, -1, attn.head_dim)
    q, k, v = attn.q_proj(h).view(shape), attn.k_proj(h).view(shape), attn.v_proj(h).view(shape)
    if hasattr(attn, "q_norm"):  # qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [B, H, S, hd]
    o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, scale=attn.scaling,
                                       enable_gqa=q.shape[1] != k.shape[1])  # [B, Hq, S, hd]
    y = x[:, p:] + attn.o_proj(o[:, :, p:].transpose(1, 2).reshape(b, n, -1))
    return y + layer.mlp(layer.post_attention_layernorm(y))
