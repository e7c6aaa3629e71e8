"""Chunk layout: where memory slots, text, temp beacons and global beacons sit in one chunk.

A context chunk is laid out as

    [G global-memory slots][T temp-memory slots][text, a temp beacon after every s tokens][G global beacons]

The slots come first and are contiguous, so the model carries only the *body* (everything after the
slots) from layer to layer and concatenates each layer's memory in front of it. Indices below are
given both in full-layout coordinates (as in the paper) and in body coordinates (what the model uses).
Positions restart at 0 in every chunk, so a chunk's position ids are simply arange(n_mem + n_body).

The live last chunk (pending text + question + generated tokens) has no global beacons, and gets a temp
beacon only after each *full* stride segment of its text (the reference's decoding rule, but counting text
tokens only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

# Kinds of layout positions.
GMEM, TMEM, TEXT, TBEACON, GBEACON = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class ChunkLayout:
    n_gmem: int  # G global-memory slots (0 for the first chunk of a read)
    n_tmem: int  # T_i temp-memory slots
    n_text: int
    kinds: torch.Tensor  # [S] int8, one of GMEM..GBEACON
    src: torch.Tensor  # [n_body] row of the body's embedding source: text i -> i, temp beacon -> n_text,
    #                                global beacon j -> n_text + 1 + j
    text_idx: torch.Tensor  # [n_text] body positions of the text tokens
    tbeacon_idx: torch.Tensor  # [n_tb] body positions of the temp beacons
    gbeacon_idx: torch.Tensor  # [n_gb] body positions of the global beacons

    @property
    def n_mem(self) -> int:
        return self.n_gmem + self.n_tmem

    @property
    def n_body(self) -> int:
        return len(self.src)

    @property
    def length(self) -> int:  # S: positions in the chunk
        return self.n_mem + self.n_body

    @property
    def n_tbeacons(self) -> int:
        return len(self.tbeacon_idx)

    def full_idx(self, body_idx: torch.Tensor) -> torch.Tensor:
        """Body coordinates -> full-layout coordinates (positions)."""
        return body_idx + self.n_mem


@lru_cache(maxsize=256)
def build_layout(n_text: int, n_gmem: int, n_tmem: int, stride: int, n_gbeacons: int, live: bool = False
                 ) -> ChunkLayout:
    """Layout of one chunk.

    Context chunks (live=False): a temp beacon after every `stride` text tokens and after a final partial
    segment, then `n_gbeacons` global beacons. Live chunk (live=True): beacons after full segments only and
    no global beacons. Layouts are immutable and cached: full chunks all share one.
    """
    if n_text < 0 or stride < 1:
        raise ValueError("n_text must be >= 0 and stride >= 1")
    kinds = [GMEM] * n_gmem + [TMEM] * n_tmem
    src: list[int] = []
    for i in range(n_text):
        kinds.append(TEXT)
        src.append(i)
        if (i + 1) % stride == 0 or (not live and i == n_text - 1):
            kinds.append(TBEACON)
            src.append(n_text)
    if not live:
        kinds += [GBEACON] * n_gbeacons
        src += [n_text + 1 + j for j in range(n_gbeacons)]
    body = torch.tensor(kinds[n_gmem + n_tmem:], dtype=torch.int8)
    return ChunkLayout(
        n_gmem=n_gmem,
        n_tmem=n_tmem,
        n_text=n_text,
        kinds=torch.tensor(kinds, dtype=torch.int8),
        src=torch.tensor(src, dtype=torch.long),
        text_idx=(body == TEXT).nonzero().flatten(),
        tbeacon_idx=(body == TBEACON).nonzero().flatten(),
        gbeacon_idx=(body == GBEACON).nonzero().flatten(),
    )


def render(layout: ChunkLayout, text: list, beacon="B", gbeacon="g{}", slot="P") -> list:
    """The layout as a list of symbols (text items, beacons, slots): for tests and debugging."""
    out = []
    for k in layout.kinds.tolist():
        if k in (GMEM, TMEM):
            out.append(slot)
    for s in layout.src.tolist():
        if s < layout.n_text:
            out.append(text[s])
        elif s == layout.n_text:
            out.append(beacon)
        else:
            out.append(gbeacon.format(s - layout.n_text - 1))
    return out


def plan_layouts(sizes: list[int], chunks_done: int, beacons: int, stride: int, n_global: int, budget: int
                 ) -> list[ChunkLayout]:
    """Layouts of the next context chunks (text sizes `sizes`) after `chunks_done` chunks that emitted
    `beacons` temp beacons: chunk i gets G global slots (none for the very first chunk) and
    T_i = min(budget, beacons so far) temp slots."""
    out = []
    for n in sizes:
        if n < 1:
            raise ValueError("a context chunk needs at least one text token")
        first = chunks_done == 0
        lay = build_layout(n, 0 if first else n_global, 0 if first else min(budget, beacons), stride, n_global)
        out.append(lay)
        chunks_done, beacons = chunks_done + 1, beacons + lay.n_tbeacons
    return out
