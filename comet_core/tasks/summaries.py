"""Summaries to distil: passages of the plays and essays, each with the summary that the base model writes
when the whole passage is in its window (sequence-level distillation, Kim & Rush 2016). A ``summary``
sample reads the passage into memory and asks the same question; the teacher's summary is the answer.

``python scripts/make_summaries.py`` writes them once per data folder (greedy answers of the base model,
full attention) into ``<data>/summaries/{train,eval}.jsonl``: one JSON object per line, a passage of one
of ``LENGTHS`` tokens, its question (``phrasing.toml``: the eval split asks in other words), the summary
(cut after its last full sentence) and the teacher's name. ``make_summary`` draws from them.

The lengths sit half a chunk (c = 256) below 1, 2, 4 and 8 chunks: a training step of L chunks cuts its
samples to a common length between L - 1/2 and L chunks, so a passage of the largest length below that
keeps the step at L chunks and is never cut (a cut passage would not match its summary).
"""

from __future__ import annotations

import functools
import json
import random
import re
from pathlib import Path
from typing import Any

from .corpus import DataMissingError, data_dir
from .generators import _PHRASING, Sample, make_lm
from .haystack import TooShort

LENGTHS = (128, 384, 896, 1920)  # passage tokens
QUESTIONS = {split: tuple(_PHRASING["summary"][split]) for split in ("train", "eval")}
MIN_WORDS = 8  # a shorter summary (after the cut) is not kept


def summaries_file(split: str) -> Path:
    return data_dir() / "summaries" / f"{split}.jsonl"


def draw_passage(tokenizer: Any, n_tokens: int, rng: random.Random, split: str) -> tuple[str, str, dict]:
    """(passage, question, meta): about n_tokens of one play or essay, starting at a paragraph."""
    s = make_lm(tokenizer, n_tokens, rng, split, answer_tokens=8)
    meta = {k: s.meta[k] for k in ("n_tokens", "doc_ids", "family")}
    return s.context, rng.choice(QUESTIONS[split]), meta


def cut_summary(text: str) -> str | None:
    """The text up to its last full sentence (an answer cut by the token limit ends mid-sentence), or None
    when that leaves fewer than MIN_WORDS words."""
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text)]
    out = text[:ends[-1]].strip() if ends else ""
    return out if len(out.split()) >= MIN_WORDS else None


@functools.cache
def _load(path: Path, mtime_ns: int) -> dict[int, list[dict]]:
    """The records of a summaries file with a summary, by passage length. A last line without its newline
    (the script writing it right now) is skipped."""
    del mtime_ns  # part of the cache key: a file that grew is read again
    by_len: dict[int, list[dict]] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines[:-1], 1):  # the last element follows the final newline: "" or partial
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DataMissingError(f"{path}, line {i}: not JSON; run `python scripts/make_summaries.py` "
                                   f"again (it rewrites a damaged file)") from None
        if rec.get("summary"):
            by_len.setdefault(int(rec["length"]), []).append(rec)
    return by_len


def load_summaries(split: str) -> dict[int, list[dict]]:
    """The summaries of `split` by passage length. Raises DataMissingError (naming the script that makes
    them) when the file is missing or holds none."""
    path = summaries_file(split)
    if not path.is_file():
        raise DataMissingError(f"summaries to distil not found: {path} is missing. Run `python "
                               f"scripts/make_summaries.py` (the base model summarises passages of the data "
                               f"folder), or set COMET_DATA to a folder that has them.")
    by_len = _load(path, path.stat().st_mtime_ns)
    if not by_len:
        raise DataMissingError(f"{path} holds no summaries yet: run `python scripts/make_summaries.py`")
    return by_len


def _sample(rec: dict) -> Sample:
    meta = {"n_tokens": rec["n_tokens"], "doc_ids": rec["doc_ids"], "teacher": rec["teacher"], "key": rec["key"]}
    return Sample(rec["context"], rec["question"], rec["summary"], "summary", [rec["summary"]], meta)


def eval_samples(n_tokens: int, count: int) -> list[Sample]:
    """The first `count` eval passages of n_tokens tokens in the file's order (an evaluation's samples: none
    twice, the same on every run)."""
    by_len = load_summaries("eval")
    recs = by_len.get(n_tokens, [])
    if len(recs) < count:  # (fewer than asked, or none of that length)
        has = ", ".join(f"{len(v)} of {n}" for n, v in sorted(by_len.items()))
        raise DataMissingError(f"{summaries_file('eval')} has {len(recs)} summaries of {n_tokens}-token passages, "
                               f"{count} asked (it has {has} tokens); `python scripts/make_summaries.py --eval "
                               f"{2 * count - len(recs)} --lengths {n_tokens}` adds passages (one whose summary "
                               f"had no full sentence is kept out)")
    return [_sample(r) for r in recs[:count]]


def make_summary(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                 depth: float | None = None) -> Sample:
    """A passage and the teacher's summary of it. Training (split "train") draws a passage of the largest
    length up to n_tokens; the eval split needs n_tokens to be one of the file's lengths exactly, so that
    an evaluation at a length reads passages of that length. ``depth`` and ``tokenizer`` are unused (the
    passages were cut with the teacher's tokenizer)."""
    del tokenizer, depth
    by_len = load_summaries(split)
    if split == "eval" and n_tokens not in by_len:
        raise DataMissingError(f"no eval summaries of {n_tokens}-token passages: {summaries_file(split)} has "
                               f"{', '.join(map(str, sorted(by_len)))}")
    fits = [n for n in by_len if n <= n_tokens]
    if not fits:
        raise TooShort(f"n_tokens={n_tokens} is below the shortest summarised passage ({min(by_len)} tokens)")
    return _sample(rng.choice(by_len[max(fits)]))
