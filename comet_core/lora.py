"""LoRA on backbone linears, by swapping modules (the backbone's own weights stay frozen and untouched)."""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # llama/qwen names


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(x)); A, B in fp32, B zero-initialised so training starts at the base."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int, alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in]
        delta = (x.to(self.A.dtype) @ self.A.t()) @ self.B.t()
        return self.base(x) + (self.scale * delta).to(x.dtype)


def add_lora(layers: nn.ModuleList, targets: tuple[str, ...], rank: int, alpha: float,
             generator: torch.Generator | None = None) -> nn.ModuleDict:
    """Wrap `self_attn.<target>` (q/k/v/o_proj) or `mlp.<target>` (gate/up/down_proj) of every layer in a
    LoRALinear. Returns the adapters as a ModuleDict keyed "<layer>_<target>" (so they can be saved apart
    from the backbone)."""
    adapters = nn.ModuleDict()
    for i, layer in enumerate(layers):
        for name in targets:
            parent = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            if not hasattr(parent, name):
                raise ValueError(f"no linear {name!r} in layer {i}'s attention or MLP")
            base = getattr(parent, name)
            if isinstance(base, LoRALinear):
                raise ValueError(f"layer {i} {name} already has LoRA")
            # bitsandbytes 4-bit packs weights, Int8Linear keeps int8 buffers: the module has the logical shape.
            in_f, out_f = base.in_features, base.out_features
            device = next(iter([*base.parameters(), *base.buffers()])).device
            lora = LoRALinear(base, in_f, out_f, rank, alpha, generator).to(device)
            setattr(parent, name, lora)
            adapters[f"{i}_{name}"] = lora
    return adapters
