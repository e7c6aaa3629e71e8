"""Streaming reader: text of any size in, full chunks through the model, a MemoryState out.

Text arrives as pieces of any size. It is tokenized incrementally, cut only at "safe" points (a single
space between two non-space characters), where byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3,
Qwen) give the same tokens for the two halves as for the whole. So the token stream, and therefore the
memory, does not depend on how the input was split into pieces, which is what makes resuming exact.
Only the pending partial chunk and untokenized text are kept: memory stays flat whatever the length.

The reader's state is replaced by one assignment per step, so it is consistent between any two steps;
`should_stop` is polled after every chunk block so Ctrl-C can stop at such a point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .memory import MemoryState
from .model import CometModel

TOKENIZE_WINDOW = 16_384  # characters tokenized at a time
# Chunks per layer-major block on a CPU: each layer's weights are dequantised once per block instead of
# once per chunk, with identical results (bench.experiments: +5% on an EPYC, +12% on a Xeon over block 1).
CPU_BLOCK = 4
FORCE_CUT = 4 * TOKENIZE_WINDOW  # text with no safe cut point this long is cut anyway


class Interrupted(Exception):
    """Raised when should_stop() asks the reader to stop; the reader's state is consistent."""


def safe_cut(text: str, limit: int) -> int:
    """Largest p <= limit with text[p] == ' ' between two non-space characters (0 if none)."""
    p = text.rfind(" ", 1, min(limit, len(text) - 2) + 1)
    while p > 0:
        if not text[p - 1].isspace() and not text[p + 1].isspace():
            return p
        p = text.rfind(" ", 1, p)
    return 0


class Reader:
    def __init__(self, model: CometModel, tokenizer, state: MemoryState | None = None, block: int = 1,
                 should_stop: Callable[[], bool] | None = None,
                 on_chunks: Callable[[MemoryState], None] | None = None):
        self.model, self.tok = model, tokenizer
        self.state = state if state is not None else MemoryState.empty(model.n_layers)
        self.block = max(1, block)  # chunks per layer-major block
        self.should_stop = should_stop or (lambda: False)
        self.on_chunks = on_chunks or (lambda s: None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def feed(self, text: str) -> None:
        """Add text; runs every full chunk it completes."""
        self.state = replace(self.state, pending_text=self.state.pending_text + text)
        self._drain(final=False)

    def finish(self) -> None:
        """No more text for now: tokenize the rest. A partial chunk stays pending (it goes to the live chunk
        when a question is asked, or is completed by more text appended later)."""
        self._drain(final=True)

    def _drain(self, final: bool) -> None:
        c = self.model.cfg.chunk_size
        while True:
            st = self.state
            if len(st.pending_ids) >= c:
                self._read_chunks()
                continue
            text = st.pending_text
            if not text:
                return
            if final and len(text) <= TOKENIZE_WINDOW:
                cut = len(text)
            else:
                cut = safe_cut(text, TOKENIZE_WINDOW)
                if not cut:
                    if len(text) < FORCE_CUT and not final:
                        return  # wait for more text
                    cut = min(len(text), TOKENIZE_WINDOW)
            self.state = replace(st, pending_ids=st.pending_ids + self.encode(text[:cut]),
                                 pending_text=text[cut:])

    def _read_chunks(self) -> None:
        c, st = self.model.cfg.chunk_size, self.state
        k = min(self.block, len(st.pending_ids) // c)
        ids = torch.tensor(st.pending_ids[: k * c]).view(k, 1, c)
        with torch.no_grad():
            new, _ = self.model.read(st, list(ids))
        self.state = replace(new, pending_ids=st.pending_ids[k * c:])
        self.on_chunks(self.state)
        if self.should_stop():
            raise Interrupted()
