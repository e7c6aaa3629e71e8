"""Haystacks: filler text cut into tokenised units (sentences, at most a few hundred characters), drawn
as an endless stream from source documents, with inserts (needles) placed at chosen depths and the
total length aimed at a target number of tokens."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .corpus import Doc, _docs_cached


class TooShort(ValueError):
    """The drawn text is too short for the sample's pieces (a long paragraph, many chains): another draw
    of the same task may fit."""


# Relative tolerance the context length aims for (the loop stops once within it).
LENGTH_TOLERANCE = 0.01


# ----------------------------------------------------------------------------------------------
# Tokenisation with per-unit caching
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    sep: str  # whitespace that precedes the text in the joined context
    text: str
    ntok: int  # tokens of sep + text
    para: bool = False  # starts a paragraph
    send: bool = False  # ends a sentence (a needle may follow it)
    doc: str = ""


def _count(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts without special tokens; uses the batch call when the tokenizer has one."""
    if not texts:
        return []
    try:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    except (TypeError, KeyError, AttributeError):
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [len(x) for x in ids]


def _ntok(tokenizer: Any, text: str) -> int:
    return _count(tokenizer, [text])[0]


_SENT_SPLIT = re.compile(r"(?<=[.!?])(\s+)|(?<=[.!?][\"')\]])(\s+)")
_SENT_END = re.compile(r"[.!?][\"')\]]?$")
_SPEAKER = re.compile(r"^[A-Z][A-Z ,'-]*\.$")  # "HAMLET." in plays: not a place for a needle
_MAX_UNIT_CHARS = 400

# id(tokenizer) -> (tokenizer, {(root, doc id): units}); the tokenizer is kept alive so its id stays unique.
_UNIT_CACHE: dict[int, tuple[Any, dict[tuple[str, str], tuple[_Unit, ...]]]] = {}


def _segment(text: str) -> list[tuple[str, str, bool]]:
    """(sep, piece, starts_paragraph) pieces of a document, at sentence boundaries."""
    out: list[tuple[str, str, bool]] = []
    for pi, para in enumerate(re.split(r"\n[ \t]*\n\s*", text.strip())):
        if not para.strip():
            continue
        parts = _SENT_SPLIT.split(para)
        # re.split with two groups yields: text, g1, g2, text, g1, g2, ...
        pieces = [parts[0]]
        seps = [""]
        for k in range(1, len(parts), 3):
            seps.append(parts[k] or parts[k + 1] or " ")
            pieces.append(parts[k + 2])
        first = True
        for sep, piece in zip(seps, pieces, strict=True):
            if not piece:
                continue
            for j, chunk in enumerate(_wrap(piece)):
                s = ("\n\n" if pi else "") if first else (sep if j == 0 else " ")
                out.append((s, chunk, first))
                first = False
    return out


def _wrap(piece: str) -> list[str]:
    if len(piece) <= _MAX_UNIT_CHARS:
        return [piece]
    chunks, cur = [], ""
    for w in piece.split(" "):
        if cur and len(cur) + 1 + len(w) > _MAX_UNIT_CHARS:
            chunks.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        chunks.append(cur)
    return chunks


def _units(tokenizer: Any, root: str, doc: Doc) -> tuple[_Unit, ...]:
    entry = _UNIT_CACHE.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        if len(_UNIT_CACHE) >= 4:
            _UNIT_CACHE.clear()
        entry = (tokenizer, {})
        _UNIT_CACHE[id(tokenizer)] = entry
    cache = entry[1]
    key = (root, doc.id)
    if key not in cache:
        segs = _segment(doc.text)
        counts = _count(tokenizer, [s + t for s, t, _ in segs])
        cache[key] = tuple(
            _Unit(s, t, n, para=p, send=bool(_SENT_END.search(t)) and not _SPEAKER.match(t), doc=doc.id)
            for (s, t, p), n in zip(segs, counts, strict=True)
        )
    return cache[key]


def _trim(tokenizer: Any, unit: _Unit, max_tokens: int) -> tuple[_Unit | None, str]:
    """Longest word prefix of ``unit`` with at most ``max_tokens`` tokens, and the remaining text."""
    words = []  # word, space, word, ...; long words (URLs) are cut every 12 characters
    for j, w in enumerate(re.split(r"(\s+)", unit.text)):
        if j % 2 == 0 and len(w) > 24:
            for c in range(0, len(w), 12):
                words += [w[c:c + 12], ""]
            words.pop()
        else:
            words.append(w)
    n_words = (len(words) + 1) // 2

    def prefix(k: int) -> str:
        return "".join(words[: 2 * k - 1]) if k > 0 else ""

    lo, hi = 0, n_words  # invariant: prefix(lo) fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _ntok(tokenizer, unit.sep + prefix(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None, unit.text
    head = prefix(lo)
    rest = "".join(words[2 * lo - 1:])
    u = _Unit(unit.sep, head, _ntok(tokenizer, unit.sep + head), unit.para, False, unit.doc)
    return u, rest


class _Stream:
    """An endless, lazily built stream of text units: a random document from a random paragraph on,
    then another random document, and so on. It is deterministic given its rng, and re-reading from
    the start always gives the same units."""

    def __init__(self, tokenizer: Any, root: str, docs: Sequence[Doc], rng: random.Random,
                 first: tuple[Doc, int] | None = None, family: str = ""):
        if not docs:
            raise ValueError("no documents to draw filler from")
        self.tok, self.root, self.docs = tokenizer, root, list(docs)
        self.rng = random.Random(rng.getrandbits(64))
        self.buf: list[_Unit] = []
        self.first = first
        self.family = family
        self.last_doc: Doc | None = None

    def _extend(self) -> None:
        if self.first is not None:
            doc, start = self.first
            self.first = None
        else:
            doc = self.rng.choice(self.docs)
            for _ in range(3):
                if doc is not self.last_doc or len(self.docs) == 1:
                    break
                doc = self.rng.choice(self.docs)
            units = _units(self.tok, self.root, doc)
            starts = [i for i, u in enumerate(units) if u.para] or [0]
            start = self.rng.choice(starts[: max(1, (len(starts) * 3) // 4)])
        units = _units(self.tok, self.root, doc)[start:]
        if not units:
            return
        sep = "\n\n" if self.buf else ""
        self.buf.append(_Unit(sep, units[0].text, _ntok(self.tok, sep + units[0].text), True,
                              units[0].send, doc.id))
        self.buf.extend(units[1:])
        self.last_doc = doc

    def get(self, i: int) -> _Unit:
        guard = 0
        while i >= len(self.buf):
            self._extend()
            guard += 1
            if guard > 1000:
                raise RuntimeError("could not build filler text (documents are empty?)")
        return self.buf[i]

    def take(self, budget: int) -> tuple[list[_Unit], int, str]:
        """Units totalling about ``budget`` tokens (never more), the index of the next unread unit,
        and the unread remainder of a unit that was cut at a word boundary ("" if none)."""
        out: list[_Unit] = []
        used, i = 0, 0
        while True:
            u = self.get(i)
            if used + u.ntok <= budget:
                out.append(u)
                used += u.ntok
                i += 1
                continue
            rest = ""
            if budget - used >= 2:
                part, rest = _trim(self.tok, u, budget - used)
                if part is not None:
                    out.append(part)
                    i += 1
                else:
                    rest = ""
            return out, i, rest


@dataclass
class _Insert:
    depth: float
    text: str
    kind: str = "inline"  # "inline": after a sentence; "para": as its own paragraph


def _haystack(tokenizer: Any, n_tokens: int, stream: _Stream, inserts: Sequence[_Insert],
              intro: str | None = None) -> tuple[str, dict[str, Any]]:
    """Filler text of ``n_tokens`` tokens in total, with ``inserts`` placed at their depths (fraction of
    filler tokens before each insert) at sentence (or paragraph) boundaries."""
    if stream.family == "plays":  # verse: a needle goes between speeches, not after "HAMLET."
        inserts = [_Insert(x.depth, x.text, "para") for x in inserts]
    ins = sorted(inserts, key=lambda x: x.depth)
    ins_seps = ["\n\n" if x.kind == "para" else " " for x in ins]
    fixed = sum(_count(tokenizer, [s + x.text for s, x in zip(ins_seps, ins, strict=True)]))
    fixed += _ntok(tokenizer, intro + "\n\n") if intro else 0
    budget = n_tokens - fixed
    if budget < 8:
        raise TooShort(f"n_tokens={n_tokens} is too small for this sample (needs > {fixed + 8})")
    tol = max(2, int(LENGTH_TOLERANCE * n_tokens))
    best: tuple[int, str, dict[str, Any]] | None = None
    for _ in range(5):
        units, _, _ = stream.take(budget)
        context, meta = _assemble(units, ins, ins_seps, intro)
        length = _ntok(tokenizer, context)
        meta["n_tokens"] = length
        if best is None or abs(length - n_tokens) < best[0]:
            best = (abs(length - n_tokens), context, meta)
        if abs(length - n_tokens) <= tol:
            break
        budget += n_tokens - length
    assert best is not None
    return best[1], best[2]


def _assemble(units: list[_Unit], ins: list[_Insert], ins_seps: list[str],
              intro: str | None) -> tuple[str, dict[str, Any]]:
    cum = [0]
    for u in units:
        cum.append(cum[-1] + u.ntok)
    total = cum[-1]
    n = len(units)
    placed: list[tuple[int, int]] = []  # (boundary index, insert index)
    for k, x in enumerate(ins):
        # The end is a boundary only if the last unit was not cut mid-sentence to fit the budget.
        end = [n] if n == 0 or units[-1].send else []
        lo = placed[-1][0] if placed else 0  # keep inserts in depth order
        target = x.depth * total
        sent = [i for i in range(lo, n) if i == 0 or units[i - 1].send or units[i].para] + end
        paras = [i for i in range(lo, n) if i == 0 or units[i].para] + end
        best = min(sent or [n], key=lambda i: abs(cum[i] - target))
        if x.kind == "para" and paras:
            # prefer a real paragraph break unless it is much farther from the target depth
            bp = min(paras, key=lambda i: abs(cum[i] - target))
            if abs(cum[bp] - target) <= abs(cum[best] - target) + 0.05 * total + 8:
                best = bp
        placed.append((best, k))
    pieces: list[str] = []
    if intro:
        pieces.append(intro)
    char_pos: list[int] = [0] * len(ins)
    depths: list[float] = [0.0] * len(ins)
    pi = 0
    length = len(intro) if intro else 0

    def add(sep: str, text: str) -> int:
        nonlocal length
        if not pieces:
            sep = ""
        elif intro and len(pieces) == 1:
            sep = "\n\n"
        pieces.append(sep + text)
        start = length + len(sep)
        length += len(sep) + len(text)
        return start

    for i in range(n + 1):
        while pi < len(placed) and placed[pi][0] == i:
            k = placed[pi][1]
            char_pos[k] = add(ins_seps[k], ins[k].text)
            depths[k] = cum[i] / total if total else 0.0
            pi += 1
        if i < n:
            u = units[i]
            sep = u.sep
            if pi > 0 and placed[pi - 1][0] == i:  # right after an insert
                sep = "\n\n" if ins[placed[pi - 1][1]].kind == "para" else (u.sep or " ")
            add(sep, u.text)
    meta = {
        "depths": depths,
        "char_positions": char_pos,
        "doc_ids": sorted({u.doc for u in units if u.doc}),
    }
    return "".join(pieces), meta



def _depth(rng: random.Random, depth: float | None) -> float:
    if depth is None:
        return rng.random()
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    return float(depth)


def _prose_stream(tokenizer: Any, root: str, rng: random.Random, split: str) -> _Stream:
    family = "essays" if rng.random() < 0.7 else "plays"
    return _Stream(tokenizer, root, _docs_cached(root, family, split), rng, family=family)
