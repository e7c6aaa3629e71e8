"""Answering from memory: prefill the live last chunk with a KV cache, then decode token by token.

The live chunk is [memory slots][pending text + prompt + generated text]. A temp beacon goes after every
`stride` text tokens of that chunk, as in training: it is fed to the model (so later tokens see it, and
the layout matches what the model was trained on) but its logits are discarded and it never reaches the
output. Beacons do not count against max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .memory import MemoryState
from .model import CometModel
from .prompt import NO_REPEAT_NGRAM


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy when temperature == 0, else temperature + nucleus (top-p) sampling. logits: [V] fp32."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        p_sorted, idx = probs.sort(descending=True)
        keep = p_sorted.cumsum(-1) - p_sorted < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], p_sorted[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def repeat_bans(out: Sequence[int], n: int) -> list[int]:
    """Tokens that would end a run of n tokens already in `out` (the answer so far): the n-1 newest tokens
    followed by each of them occurred before. n = 0: none."""
    if n <= 0 or len(out) < n - 1:
        return []
    tail = list(out[len(out) - n + 1:])
    return [out[i + n - 1] for i in range(len(out) - n + 1) if list(out[i:i + n - 1]) == tail]


@torch.no_grad()
def generate(model: CometModel, state: MemoryState, prompt_ids: Sequence[int], max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, stop_ids: Sequence[int] = (),
             seed: int | None = None, n_vocab: int | None = None,
             no_repeat_ngram: int = NO_REPEAT_NGRAM) -> Iterator[int]:
    """Yield generated token ids one at a time (stop tokens are not yielded). `state` is not modified.

    no_repeat_ngram: a run of this many answer tokens never occurs twice (0 = no limit); the prompt and
    the text read are not counted, so the answer may quote them.

    n_vocab: ids >= n_vocab (embedding rows the tokenizer does not know, e.g. padding rows or a reference
    checkpoint's memory tokens) are never sampled.
    """
    if not prompt_ids:
        raise ValueError("nothing to answer from: the prompt is empty")
    n_live = model.live_layout(state, len(prompt_ids)).length + int(model.cfg.sink)
    budget = n_live + (max_new_tokens + 1) * (1 + 1 / model.cfg.stride) + 1
    if budget > model.max_positions:
        raise ValueError(f"prompt too long: the live chunk would need {int(budget)} positions, the model has "
                         f"{model.max_positions}; shorten the question or lower --max-new-tokens")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    stride, n_text = model.cfg.stride, len(prompt_ids)
    cache = model.new_cache()
    ids = torch.tensor([list(prompt_ids)], device=model.device)
    logits = model.logits(model.live(state, ids, cache=cache)[:, -1])[0]
    out: list[int] = []
    for i in range(max_new_tokens):
        if n_vocab is not None and n_vocab < logits.shape[-1]:
            logits[n_vocab:] = float("-inf")
        logits[repeat_bans(out, no_repeat_ngram)] = float("-inf")
        tok = sample(logits, temperature, top_p, gen)
        if tok in stop_ids:
            return
        out.append(tok)
        yield tok
        if i == max_new_tokens - 1:
            return
        logits = model.step(tok, cache)
        n_text += 1
        if n_text % stride == 0:
            model.step(None, cache)  # temp beacon: in the cache, logits discarded
