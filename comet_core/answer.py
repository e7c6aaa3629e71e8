"""The answer layout: where the question meets the memory. One function for every caller (CLI, trainer,
evaluation, benchmarks), so what is trained is what is asked.

A document is read in full chunks of c tokens; at most c - 1 tokens are left pending when it ends. The
priming length N says how many of those pending tokens stay *live* (in the last chunk, in front of the
question); the rest are read into memory first, as a final partial chunk:

    N = 0 (default)  [sink][memory slots][question][answer]            everything read goes through memory
    N = c            [sink][memory slots][pending tail][question][answer]    (the layout before N existed)

With N = 0 the question sits right after the memory, as in every compressed-memory method that learned to
read with a frozen or lightly tuned decoder (ICAE, gist tokens, AutoCompressor, CCM), and as the reference's
right-aligned inference (`--max_priming_length`). The flush goes into a *copy* of the state: a saved state
keeps its pending tokens, so appending more text later is identical to one uninterrupted read.
An empty question (continue the document) keeps at least one token live to predict from.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .memory import MemoryState
from .model import CometModel

DEFAULT_PRIMING = 0


def n_flushed(n_pending: int, priming: int, has_question: bool = True) -> int:
    """How many of the n_pending tail tokens are read into memory before answering (the rest stay live)."""
    if priming < 0:
        raise ValueError(f"priming must be >= 0, got {priming}")
    keep = min(n_pending, max(priming, 0 if has_question else 1))
    return n_pending - keep


def plan_context(n_ctx: int, chunk_size: int, priming: int, has_question: bool = True,
                 sizes: list[int] | None = None) -> tuple[list[int], int]:
    """Chunk sizes read into memory for a context of n_ctx tokens, and how many tokens stay live.

    `sizes`: the context chunks a reader would cut (default: full chunks of chunk_size); the tokens after
    them are the pending tail that `n_flushed` splits."""
    if sizes is None:
        sizes = [chunk_size] * (n_ctx // chunk_size)
    pending = n_ctx - sum(sizes)
    if pending < 0:
        raise ValueError("chunk sizes exceed the context")
    flush = n_flushed(pending, priming, has_question)
    sizes = sizes + ([flush] if flush else [])
    if not has_question and pending == 0 and sizes:  # "continue the text" needs a token to predict from
        sizes = sizes[:-1] + ([sizes[-1] - 1] if sizes[-1] > 1 else [])
        return sizes, 1
    return sizes, pending - flush


def prepare(model: CometModel, state: MemoryState, prompt_ids: list[int], priming: int = DEFAULT_PRIMING
            ) -> tuple[MemoryState, list[int]]:
    """The state to answer from and the live chunk's ids (kept pending tail + prompt_ids).

    `state` is not modified; its pending tokens beyond the priming length are read into the returned copy,
    whose pending tokens are empty (the kept ones are in the live ids).
    """
    pending = list(state.pending_ids)
    flush = n_flushed(len(pending), priming, has_question=bool(prompt_ids))
    state = state.to(model.device)
    if flush:
        with torch.no_grad():
            state, _ = model.read(state, [torch.tensor([pending[:flush]], device=model.device)])
    return replace(state, pending_ids=[], pending_text=""), pending[flush:] + list(prompt_ids)
