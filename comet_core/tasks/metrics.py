"""Metrics of a prediction against a sample's gold answer(s)."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

from .generators import Sample

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
    * ``fact``: acc (the normalised answer appears in the normalised prediction), em and f1;
    * ``incident``: acc (one of the words that name the cause, ``answers``, appears in the prediction);
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
    if sample.task == "incident":
        return {"acc": _mentions(prediction, golds)}
    out = {"em": squad_em(prediction, golds), "f1": squad_f1(prediction, golds)}
    if sample.task == "fact":
        out = {"acc": _mentions(prediction, golds), **out}
    return out


def _mentions(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a normalised gold appears as whole words in the normalised prediction."""
    words = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in words for g in golds))
