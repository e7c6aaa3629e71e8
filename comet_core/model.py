"""CometModel: drives a stock Hugging Face decoder (llama / qwen2 / qwen3) chunk by chunk with CoMeT memory.

No subclassing and no patched classes: we call the model's own embedding, rotary embedding, decoder
layers (or, while reading, their own submodules: prefix.py), final norm and head. One (chunk, layer)
cell is four steps:

    x = [memory_l ; body]          inject: global memory o_proj(state_l) and the temp queue, in front
    y = layer_l(x)                 the decoder layer (causal sdpa, positions 0..S-1); the memory rows'
                                   outputs are discarded, so they skip o_proj and the MLP (prefix.py)
    state_l = GlobalNet_l(y[global beacons], state_l)           extract + gated update
    queue_l = FIFO(queue_l + TempNet_l(y[temp beacons]))         extract + push

Attention sink (cfg.sink, our addition to the paper's layout): position 0 of every chunk holds one real
token, the model's BOS (or EOS), ahead of the memory slots. Pretrained models park attention on their
first token; without a real token there, the first memory slot takes that role and untrained memory
disturbs every text token. The sink attends only to itself, so its hidden state at each layer is the
same in every chunk: `sink_states` computes it once (once per set of weights without autograd) and it
is put in front at each layer.

Without autograd each layer visit runs on dense weights made once (dense.py: 4-bit weights dequantised,
LoRA folded in); with `compile` on (COMET_COMPILE=1, off by default) the prefix layer (prefix.py) runs as
one compiled function (fused.py).

`read()` sweeps a block of chunks layer-major (for each layer, every chunk of the block); a block of one
chunk is the ordinary chunk-major order. Both give identical results because cell (i, l) depends only on
(i, l-1) and (i-1, l).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from . import fused
from .config import FAMILIES, CometConfig
from .dense import dense_weights
from .layout import ChunkLayout, build_layout, plan_layouts
from .memory import CometMemory, MemoryState, push_fifo
from .prefix import layer_with_prefix


def _check_backbone(lm: nn.Module) -> None:
    cfg = lm.config
    if cfg.model_type not in FAMILIES:
        raise ValueError(f"unsupported model type {cfg.model_type!r}; CoMeT supports {', '.join(FAMILIES)}")
    if getattr(cfg, "use_sliding_window", False) or any(
            t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        raise ValueError("CoMeT needs full attention in every layer (no sliding window)")
    if lm.config._attn_implementation != "sdpa":
        raise ValueError("load the backbone with attn_implementation='sdpa'")


class CometModel:
    """A backbone plus its CoMeT memory module. Holds no per-read state: that is a MemoryState."""

    compile: bool = fused.enabled()  # reading's layer visits through torch.compile (fused.py)

    def __init__(self, lm: nn.Module, mem: CometMemory):
        _check_backbone(lm)
        self.lm, self.mem, self.cfg = lm, mem, mem.cfg
        inner = lm.model
        self.embed, self.layers, self.norm, self.head = inner.embed_tokens, inner.layers, inner.norm, lm.lm_head
        self.rotary = inner.rotary_emb
        self.dtype = self.embed.weight.dtype  # activation dtype
        self.device = self.embed.weight.device
        self.n_layers, self.d = len(self.layers), lm.config.hidden_size
        self.max_positions = lm.config.max_position_embeddings
        mem.to(self.device)
        mem.attach_lora(self.layers)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sinks: tuple[tuple, list[torch.Tensor | None]] | None = None  # (key, states) of the last no-grad call
        self._fused: tuple[list, dict] | None = None  # layer_fn's weights during a no-grad layer visit
        cfg = lm.config
        self.sink_id = next((t for t in (cfg.bos_token_id, cfg.eos_token_id, 0) if isinstance(t, int)), 0)
        if self.cfg.max_chunk_len() > self.max_positions:
            raise ValueError(f"chunk length {self.cfg.max_chunk_len()} exceeds the model's "
                             f"{self.max_positions} positions")

    @classmethod
    def create(cls, lm: nn.Module, cfg: CometConfig, seed: int = 0) -> CometModel:
        """A fresh (untrained, deterministically initialised) memory module on top of `lm`."""
        w = lm.model.embed_tokens.weight.detach().float()
        mem = CometMemory(cfg, lm.config.num_hidden_layers, lm.config.hidden_size, w.mean(0), w.std().item(),
                          seed=seed)
        return cls(lm, mem)

    # ---- helpers -------------------------------------------------------------------------------
    def rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions 0..n-1: [1, n, head_dim], computed once for the longest chunk seen."""
        if self._rope is None or self._rope[0].shape[1] < n:
            m = max(n, self.cfg.max_chunk_len())
            pos = torch.arange(m, device=self.device)[None]
            x = torch.zeros(1, dtype=self.dtype, device=self.device)
            self._rope = self.rotary(x, pos)
        cos, sin = self._rope
        return cos[:, :n], sin[:, :n]

    def embed_body(self, ids: torch.Tensor, lay: ChunkLayout) -> torch.Tensor:
        """ids: [B, n_text] -> body embeddings [B, n_body, d] (text, temp beacons, global beacons)."""
        x = self.embed(ids)  # [B, n, d]
        special = self.mem.special.to(x.dtype)[None].expand(x.shape[0], -1, -1)  # [B, 1+G, d]
        return torch.cat([x, special], dim=1)[:, lay.src.to(x.device)]

    def memory_at(self, l: int, gs: torch.Tensor | None, tq: torch.Tensor | None) -> torch.Tensor | None:
        """Layer-l memory slots [B, G+T, d]: global memory (recomputed from the state), then the queue."""
        parts = []
        if gs is not None:
            parts.append(self.mem.global_nets[l].memory(gs))
        if tq is not None:
            parts.append(tq)
        return torch.cat(parts, dim=1) if parts else None

    def sink_states(self, batch: int = 1) -> list[torch.Tensor | None]:
        """Per-layer input hidden states of the sink token, [B, 1, d] each (None entries without a sink).

        They depend only on the weights, so without autograd they are computed once and reused until a
        parameter changes (a training step or a loaded adapter bumps the tensors' version counters)."""
        if not self.cfg.sink:
            return [None] * self.n_layers
        key = (batch, sum(p._version for p in self.mem.parameters()))
        if not torch.is_grad_enabled() and self._sinks is not None and self._sinks[0] == key:
            return self._sinks[1]
        h = self.embed(torch.tensor([[self.sink_id]], device=self.device))
        out = []
        for l in range(self.n_layers):
            out.append(h.expand(batch, -1, -1))
            h = self.run_layer(l, h, None, None)
        if not torch.is_grad_enabled():
            self._sinks = (key, out)
        return out

    def dense(self, l: int):
        """Context for one visit of layer l: without autograd, quantised weights are dequantised and LoRA
        folded in once (dense.py); with `compile`, the visit's weights are kept for fused.py."""
        return nullcontext() if torch.is_grad_enabled() else self._dense_visit(l)

    @contextmanager
    def _dense_visit(self, l: int):
        layer = self.layers[l]
        with dense_weights(layer, self.dtype) as w:
            self._fused = fused.layer_weights(layer, w) if self.compile and fused.supported(layer) else None
            try:
                yield
            finally:
                self._fused = None

    def run_layer(self, l: int, body: torch.Tensor, mem: torch.Tensor | None, sink: torch.Tensor | None,
                  cache=None, start: int = 0) -> torch.Tensor:
        """Decoder layer l over [sink; mem; body] at positions start..start+S-1; returns the body part.

        Without a KV cache the prefix rows (sink, memory slots) skip o_proj and the MLP (prefix.py); with
        one (the live chunk for generation) the stock layer runs over every row and fills the cache."""
        prefix = [t for t in (sink, mem) if t is not None]
        x = torch.cat([*prefix, body], dim=1) if prefix else body
        cos, sin = self.rope(start + x.shape[1])
        if prefix and cache is None and start == 0:
            if self._fused is not None:
                w, hints = self._fused
                return fused.compiled()(x, x.shape[1] - body.shape[1], cos, sin, w, **hints)
            return layer_with_prefix(self.layers[l], x, x.shape[1] - body.shape[1], cos, sin)
        out = self.layers[l](x, attention_mask=None, cache=cache, use_cache=cache is not None,
                             position_embeddings=(cos[:, start:], sin[:, start:]))
        y = out[0] if isinstance(out, tuple) else out
        return y[:, x.shape[1] - body.shape[1]:] if prefix else y

    def cell(self, l: int, lay: ChunkLayout, body: torch.Tensor, gs: torch.Tensor | None,
             tq: torch.Tensor | None, sink: torch.Tensor | None):
        """One (chunk, layer) step: inject memory, run the layer, extract beacons, update the memory."""
        y = self.run_layer(l, body, self.memory_at(l, gs, tq), sink)
        if len(lay.gbeacon_idx):
            gs = self.mem.global_nets[l](y[:, lay.gbeacon_idx.to(y.device)], gs)
        if len(lay.tbeacon_idx) and self.cfg.budget:
            tq = push_fifo(tq, self.mem.temp_nets[l](y[:, lay.tbeacon_idx.to(y.device)]), self.cfg.budget)
        return y, gs, tq

    def layouts(self, state: MemoryState, sizes: list[int]) -> list[ChunkLayout]:
        """Layouts of the next context chunks of the given text sizes, continuing from `state`."""
        c = self.cfg
        return plan_layouts(sizes, state.chunks, state.beacons, c.stride, c.n_global, c.budget)

    # ---- reading ---------------------------------------------------------------------------------
    def read(self, state: MemoryState, chunks: list[torch.Tensor], grad_ckpt: bool = False,
             return_hidden: bool = False) -> tuple[MemoryState, list[torch.Tensor]]:
        """Read a block of context chunks (each [B, n_i] token ids) into memory, layer-major.

        Returns the new state (the input state is not modified) and, if asked, the last layer's hidden
        states at each chunk's text positions ([B, n_i, d], before the final norm) for a training loss.
        """
        lays = self.layouts(state, [c.shape[1] for c in chunks])
        bodies = [self.embed_body(ids.to(self.device), lay) for ids, lay in zip(chunks, lays, strict=True)]
        gss, tqs = list(state.global_state), list(state.temp)
        sinks = self.sink_states(bodies[0].shape[0])
        for l in range(self.n_layers):
            gs, tq = gss[l], tqs[l]
            with self.dense(l):
                for i, lay in enumerate(lays):
                    if grad_ckpt:
                        bodies[i], gs, tq = checkpoint(self.cell, l, lay, bodies[i], gs, tq, sinks[l],
                                                       use_reentrant=False)
                    else:
                        bodies[i], gs, tq = self.cell(l, lay, bodies[i], gs, tq, sinks[l])
            gss[l], tqs[l] = gs, tq
        hidden = [b[:, lay.text_idx.to(b.device)] for b, lay in zip(bodies, lays, strict=True)] \
            if return_hidden else []
        new = replace(state, global_state=gss, temp=tqs, chunks=state.chunks + len(chunks),
                      tokens=state.tokens + sum(c.shape[1] for c in chunks),
                      beacons=state.beacons + sum(lay.n_tbeacons for lay in lays))
        return new, hidden

    # ---- the live last chunk -----------------------------------------------------------------------
    def live_layout(self, state: MemoryState, n_text: int) -> ChunkLayout:
        first = state.chunks == 0
        return build_layout(n_text, 0 if first else self.cfg.n_global, state.n_temp, self.cfg.stride, 0,
                            live=True)

    def live(self, state: MemoryState, ids: torch.Tensor, cache=None, grad_ckpt: bool = False
             ) -> torch.Tensor:
        """Run the live last chunk (ids [B, p]: pending text + question [+ answer]) on top of memory.

        Returns the last layer's hidden states at the text positions, [B, p, d] (before the final norm).
        With a DynamicCache, fills it for decoding (the cache then holds only this chunk).
        """
        lay = self.live_layout(state, ids.shape[1])
        body = self.embed_body(ids.to(self.device), lay)
        sinks = self.sink_states(body.shape[0])
        for l in range(self.n_layers):
            mem = self.memory_at(l, state.global_state[l], state.temp[l])
            if grad_ckpt:
                body = checkpoint(self.run_layer, l, body, mem, sinks[l], cache, use_reentrant=False)
            else:
                with self.dense(l):
                    body = self.run_layer(l, body, mem, sinks[l], cache)
        return body[:, lay.text_idx.to(body.device)]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden)).float()

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.lm.config)

    def step(self, token: int | None, cache: DynamicCache) -> torch.Tensor:
        """Feed one token (None = a temp beacon) at the next position of the live chunk; returns logits [V]."""
        start = cache.get_seq_length()
        if token is None:
            x = self.mem.special[:1].to(self.dtype)[None]  # [1, 1, d]
        else:
            x = self.embed(torch.tensor([[token]], device=self.device))
        for l in range(self.n_layers):
            x = self.run_layer(l, x, None, None, cache, start=start)
        return self.logits(x[:, -1])[0]

    # ---- identity ------------------------------------------------------------------------------------
    def adapter_hash(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.mem.adapter_state().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def empty_state(model: CometModel) -> MemoryState:
    return MemoryState.empty(model.n_layers)
