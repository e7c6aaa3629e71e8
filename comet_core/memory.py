"""The two per-layer memory nets, the trainable CoMeT module, and the memory state they produce.

Global memory (per layer l), from the outputs H [B,G,d] at the G global beacons of a chunk:
    cur   = RMSNorm(H)
    state = cur                                    (first chunk: no gate)
    state = g * state + (1 - g) * cur,  g = sigmoid(g_proj([cur; state]))  [B,G,1], one gate per slot
    memory = o_proj(state),  o_proj(x) = x + up(down(x))    (rank-r residual bottleneck)
Temp memory (per layer l), from the outputs at the temp beacons: o_proj(RMSNorm(h)), appended to a FIFO
queue that keeps the newest `budget` entries. Both are written into the next chunk's memory slots at
layer l's input. The nets compute in fp32 whatever the backbone's dtype; the state is kept in the
backbone's activation dtype (what is injected), so a saved state is bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import CometConfig
from .lora import add_lora


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., d] fp32
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Bottleneck(nn.Module):
    """x + up(down(x)): a rank-r residual projection."""

    def __init__(self, d: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.up = nn.Linear(rank, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class GlobalMemoryNet(nn.Module):
    def __init__(self, d: int, rank: int):
        super().__init__()
        self.norm = RMSNorm(d, eps=1e-6)
        self.g_proj = nn.Linear(2 * d, 1, bias=False)
        self.o_proj = Bottleneck(d, rank)

    def gate(self, cur: torch.Tensor, state: torch.Tensor) -> torch.Tensor:  # -> [B,G,1] in (0,1)
        return torch.sigmoid(self.g_proj(torch.cat([cur, state], dim=-1)))

    def forward(self, h: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """h: [B,G,d] beacon outputs, state: [B,G,d] or None -> new state [B,G,d] (dtype of h)."""
        cur = self.norm(h.float())
        if state is None:
            return cur.to(h.dtype)
        prev = state.float()
        g = self.gate(cur, prev)
        return (g * prev + (1 - g) * cur).to(h.dtype)

    def memory(self, state: torch.Tensor) -> torch.Tensor:  # [B,G,d] -> [B,G,d]
        return self.o_proj(state.float()).to(state.dtype)


class TempMemoryNet(nn.Module):
    def __init__(self, d: int, rank: int):
        super().__init__()
        self.norm = RMSNorm(d, eps=1e-12)
        self.o_proj = Bottleneck(d, rank)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B,n,d] -> [B,n,d]
        return self.o_proj(self.norm(h.float())).to(h.dtype)


class CometMemory(nn.Module):
    """Everything CoMeT adds to a backbone: per-layer memory nets, the beacon embeddings, optional LoRA.

    `special` holds the learned embeddings of the new tokens: row 0 is the shared temp beacon, rows 1..G
    the G global beacons. They never enter the tokenizer's vocabulary, so the text "<beacon>" in a file
    is ordinary text and the model can never emit a memory token. (The reference's `<|memory|>`
    placeholder is not needed: slot inputs are overwritten at every layer, layer 0 included.)
    """

    def __init__(self, cfg: CometConfig, n_layers: int, d: int, embed_mean: torch.Tensor,
                 embed_std: float, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        self.global_nets = nn.ModuleList(GlobalMemoryNet(d, cfg.rank) for _ in range(n_layers))
        self.temp_nets = nn.ModuleList(TempMemoryNet(d, cfg.rank) for _ in range(n_layers))
        for m in self.modules():  # the reference's init: Linear ~ N(0, 0.02), norms = 1
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02, generator=gen)
        noise = torch.randn(cfg.n_global + 1, d, generator=gen) * (1e-3 * embed_std)
        self.special = nn.Parameter(embed_mean.float().cpu() + noise)  # [1+G, d]
        self.lora = nn.ModuleDict()
        self._lora_gen = gen

    def attach_lora(self, layers: nn.ModuleList) -> None:
        if self.cfg.lora_rank > 0 and len(self.lora) == 0:
            self.lora = add_lora(layers, self.cfg.lora_targets, self.cfg.lora_rank, self.cfg.lora_alpha,
                                 self._lora_gen)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Trainable tensors only (LoRA without the wrapped base weights)."""
        return {k: v for k, v in self.state_dict().items() if ".base." not in k}

    def trainable(self) -> dict[str, nn.Parameter]:
        """The adapter's parameters by name (the backbone's weights wrapped by LoRA excluded)."""
        return {k: p for k, p in self.named_parameters() if ".base." not in k}


@dataclass
class MemoryState:
    """What the model knows about what it has read: per-layer global state and temp queue.

    global_state[l]: [B,G,d] or None before the first chunk; temp[l]: [B,T,d] (oldest first) or None.
    Tensors are replaced, never modified in place, so a shallow copy is a consistent snapshot.
    pending_ids / pending_text: text tokenized but not yet a full chunk, and text not yet tokenized.
    """

    global_state: list[torch.Tensor | None]
    temp: list[torch.Tensor | None]
    chunks: int = 0  # context chunks read into memory
    tokens: int = 0  # text tokens read into memory (pending ones not counted)
    beacons: int = 0  # temp beacons emitted so far (the queue holds min(budget, beacons))
    pending_ids: list[int] = field(default_factory=list)
    pending_text: str = ""
    sources: list[dict] = field(default_factory=list)  # what was read: engine.SourceRecord each

    @classmethod
    def empty(cls, n_layers: int) -> MemoryState:
        return cls([None] * n_layers, [None] * n_layers)

    @property
    def n_layers(self) -> int:
        return len(self.global_state)

    @property
    def n_temp(self) -> int:
        t = self.temp[0]
        return 0 if t is None else t.shape[1]

    def copy(self) -> MemoryState:
        return MemoryState(list(self.global_state), list(self.temp), self.chunks, self.tokens, self.beacons,
                           list(self.pending_ids), self.pending_text, [dict(s) for s in self.sources])

    def to(self, device: torch.device | str) -> MemoryState:
        """The same state with its tensors on `device`."""
        s = self.copy()
        s.global_state = [None if t is None else t.to(device) for t in s.global_state]
        s.temp = [None if t is None else t.to(device) for t in s.temp]
        return s

    def nbytes(self) -> int:
        """Bytes of the state tensors (global state + queue, all layers)."""
        return sum(t.numel() * t.element_size() for t in self.global_state + self.temp if t is not None)


def push_fifo(queue: torch.Tensor | None, new: torch.Tensor, budget: int) -> torch.Tensor | None:
    """Append new [B,n,d] entries to queue [B,T,d] and keep the newest `budget` (oldest evicted first)."""
    if budget == 0:
        return None
    q = new if queue is None else torch.cat([queue, new], dim=1)
    return q[:, -budget:] if q.shape[1] > budget else q
