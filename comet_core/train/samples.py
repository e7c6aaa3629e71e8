"""Training samples as token ids in the answer layout, drawn a batch at a time.

A sample is its context chunks (read into memory) and its live chunk (kept pending tail + question +
answer + end of turn), cut by `answer.plan_context`, the same function the CLI answers with. The samples of
one step share a chunk plan (their contexts are cut to a common length), so the step reads them as one
batch: one forward and one backward for all of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..answer import plan_context
from ..config import CometConfig
from ..prompt import end_of_turn_id, followup_ids, question_ids
from ..tasks import Sample, TooShort, make_sample

IN_MEMORY_TASKS = ("passkey", "recall")  # tasks whose needle `in_memory` can keep out of the live chunk


@dataclass
class Encoded:
    chunks: list[list[int]]  # context chunks read into memory
    live: list[int]  # kept pending tail + question + answer (+ end of turn) [+ more questions and answers]
    n_target: int  # the last n_target tokens of `live` are predicted (the last answer)
    earlier: tuple[tuple[int, int], ...] = ()  # [start, end) spans of `live` predicted too: earlier answers

    @property
    def text_tokens(self) -> int:
        return sum(map(len, self.chunks)) + len(self.live)

    def targets(self) -> list[int]:
        """Positions of `live` whose token is predicted (each from the position before it)."""
        return [i for a, b in self.earlier for i in range(a, b)] + list(range(len(self.live) - self.n_target,
                                                                              len(self.live)))

    def weights(self, end_weight: float = 1.0) -> list[float]:
        """Loss weight of each target (aligned with `targets`): 1, except the last answer's last two targets
        (its last token and the end of turn), which get end_weight: where the answer stops."""
        k = min(2, self.n_target)
        return [1.0] * (self.n_predicted - k) + [end_weight] * k

    @property
    def n_predicted(self) -> int:
        return self.n_target + sum(b - a for a, b in self.earlier)


@dataclass
class Draw:
    """One drawn training sample."""

    level: int  # curriculum level: context chunks of the step it was drawn for
    task: str
    enc: Encoded
    text_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.text_tokens = self.enc.text_tokens


def random_sizes(n_ctx: int, c: int, rng: random.Random) -> list[int]:
    """Random context chunk sizes in [c/4, c] covering n_ctx tokens but a tail shorter than c/4."""
    sizes, left = [], n_ctx
    while left >= c // 4:
        n = min(left, rng.randint(c // 4, c))
        sizes.append(n)
        left -= n
    return sizes


def encode(sample, tok, cfg: CometConfig, rng: random.Random, random_plan: float = 0.0,
           priming: int | None = None, n_ctx: int | None = None, sizes: list[int] | None = None) -> Encoded:
    """Token ids of a sample in the answer layout the CLI uses (answer.plan_context): full chunks (or
    `sizes`, or with probability random_plan random sizes) read into memory, the pending tail beyond the
    priming length (default: the config's) read as a final partial chunk, the rest live before the
    question. A sample with more `turns` asks them after the first answer, in the same chat, and every
    answer is a target. n_ctx: keep only the first n_ctx context tokens (so the samples of a batch share a
    plan); lm samples, whose target continues the context, drop tokens from the start instead."""
    c = cfg.chunk_size
    priming = cfg.priming if priming is None else priming
    ctx = tok.encode(sample.context, add_special_tokens=False)
    if n_ctx is not None:
        ctx = ctx[len(ctx) - n_ctx:] if sample.task == "lm" else ctx[:n_ctx]
    if sizes is None and rng.random() < random_plan:
        sizes = random_sizes(len(ctx), c, rng)
    q = question_ids(tok, sample.question)
    sizes, _ = plan_context(len(ctx), c, priming, has_question=bool(q), sizes=sizes)
    chunks, i = [], 0
    for n in sizes:
        chunks.append(ctx[i:i + n])
        i += n
    live, spans = ctx[i:], []
    turns = [(sample.question, sample.answer)] + (list(sample.turns) if q else [])
    for k, (question, answer) in enumerate(turns):
        live += q if k == 0 else followup_ids(tok, question)
        target = tok.encode(answer, add_special_tokens=False) + ([end_of_turn_id(tok)] if question else [])
        spans.append((len(live), len(live) + len(target)))
        live += target
    return Encoded(chunks, live, spans[-1][1] - spans[-1][0], tuple(spans[:-1]))


def _needle_tokens(sample, tok) -> int:
    """Context tokens up to the end of the sample's needle (for recall: of the whole quoted answer)."""
    return len(tok.encode(sample.context[:sample.meta["needle_end"]], add_special_tokens=False))


def _make(task: str, tok, n_ctx: int, rng: random.Random, depth: float | None) -> Sample:
    """A training sample of `task`, drawn again (up to 8 times) where the draw does not fit `n_ctx` tokens:
    half a chunk is short for a long SQuAD paragraph or many variable chains."""
    for attempt in range(8):
        try:
            return make_sample(task, tok, n_ctx, rng, "train", depth=depth)
        except TooShort:
            if attempt == 7:
                raise


def draw_batch(tok, cfg: CometConfig, rng: random.Random, level: int, weights: dict[str, float], n: int,
               priming: int | None = None, in_memory: float = 0.0, random_plan: float = 0.0) -> list[Draw]:
    """n samples of `level` context chunks (the last one at least half full) that share one chunk plan.

    Tasks are drawn by `weights`. `in_memory` of the passkey and recall samples keep their needle (for
    recall the whole answer) in text read into memory: a needle that a priming tail, a random plan or the
    common cut pushed out of it moves up (its depth halves) and the sample is drawn again."""
    c = cfg.chunk_size
    priming = cfg.priming if priming is None else priming
    n_ctx = rng.randint((level - 1) * c + c // 2, level * c)
    tasks = rng.choices(list(weights), list(weights.values()), k=n)
    pinned = [t in IN_MEMORY_TASKS and rng.random() < in_memory for t in tasks]
    # with priming, only the full chunks are surely read into memory: place pinned needles within them
    mem_share = 1.0 if priming == 0 else (n_ctx // c * c) / n_ctx
    depths = [rng.random() * mem_share if p else None for p in pinned]
    samples = [_make(t, tok, n_ctx, rng, d) for t, d in zip(tasks, depths, strict=True)]
    use_random = rng.random() < random_plan
    for attempt in range(8):
        m = min(len(tok.encode(s.context, add_special_tokens=False)) for s in samples)
        sizes = random_sizes(m, c, rng) if use_random else None
        encs = [encode(s, tok, cfg, rng, priming=priming, n_ctx=m, sizes=sizes) for s in samples]
        bad = [k for k, s in enumerate(samples)
               if pinned[k] and _needle_tokens(s, tok) > sum(map(len, encs[k].chunks))]
        if not bad or attempt == 7:  # (after 8 tries, at a depth near 0, the samples are kept as they are)
            break
        for k in bad:
            depths[k] = (depths[k] if depths[k] is not None else samples[k].meta.get("depth", 1.0)) / 2
            samples[k] = _make(tasks[k], tok, n_ctx, rng, depths[k])
    return [Draw(level, t, e) for t, e in zip(tasks, encs, strict=True)]
