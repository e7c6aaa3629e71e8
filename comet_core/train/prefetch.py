"""Training batches drawn ahead in worker processes (`comet train --workers N`).

Drawing a batch (cutting haystacks from real text, tokenising them, placing needles) runs on the CPU. On
a GPU it took as long as a quarter of the step it fed (H200, 16 samples of 1,024 tokens: 0.8 s of
~3 s), and a bigger batch costs the GPU little but the draw in proportion. Here each worker draws whole
batches, up to `workers` steps ahead of training.

The training process still makes every random choice that shapes the run: the level of each step (the
curriculum) and a seed from its own rng; a worker draws the batch from that seed alone. So a run is
reproducible for a given --workers, though not sample for sample the same as with --workers 0. After a
promotion the batches already in flight (at most N) are still of the level before. Batches in flight
when a run stops are not in the checkpoint: a resumed run draws new ones.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from collections import deque
from collections.abc import Callable

from ..config import CometConfig
from .samples import Draw, draw_batch

_worker: dict = {}  # a worker process's tokenizer and draw settings (set once by _init)


def _init(tok, cfg: CometConfig, weights: dict[str, float], n: int, kw: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _worker.update(tok=tok, cfg=cfg, weights=weights, n=n, kw=kw)


def _draw(level: int, seed: int) -> list[Draw]:
    w = _worker
    return draw_batch(w["tok"], w["cfg"], random.Random(seed), level, w["weights"], w["n"], **w["kw"])


class Prefetch:
    """`workers` processes with one batch in flight each (and one more waiting); `next()` returns them in
    the order they were picked."""

    def __init__(self, workers: int, tok, cfg: CometConfig, weights: dict[str, float], n: int,
                 priming: int | None, in_memory: float, random_plan: float) -> None:
        kw = dict(priming=priming, in_memory=in_memory, random_plan=random_plan)
        # spawn, not fork: the training process may hold CUDA and torch's thread pools
        self.pool = mp.get_context("spawn").Pool(workers, _init, (tok, cfg, weights, n, kw))
        self.size = workers
        self.ahead: deque = deque()  # AsyncResults of batches, oldest first

    def next(self, pick: Callable[[], tuple[int, int]]) -> list[Draw]:
        """The oldest batch in flight, after topping the queue up with new ones: `pick()` -> (level, seed)."""
        while len(self.ahead) <= self.size:
            level, seed = pick()
            self.ahead.append(self.pool.apply_async(_draw, (level, seed)))
        return self.ahead.popleft().get()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
