"""What the wrong fact answers were: of the held-out questions whose answer is an eval-only value (a city,
job or pet name that training never shows), how many were answered right, and how many wrong answers were
a value from the training pools instead (many training values among the errors = a prior over a closed
set of answers, not reading); then every fact question's result per relation (city, job, count, ...).

    python -m bench.fact_errors docs/eval/r1 docs/eval/r2     # folders written by docs/eval/answers.sh
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from comet_core.tasks import generators as gen


def _norm(s: str) -> str:
    return s.strip().strip(".").lower()


def kind(answer: str) -> str:
    """Which relation a gold fact answer belongs to, by its pool ('?' if none)."""
    if answer.isdigit():
        return "count"
    pools = {"day": gen._DAYS, "color": gen._COLORS, "city": gen._CITIES, "job": gen._JOBS,
             "pet_name": gen._PET_NAMES}
    return next((k for k, pool in pools.items() if answer in pool), "?")


def fact_errors(folder: Path) -> dict:
    """Counts over every fact-*.json in `folder` (comet rows only)."""
    split_pools = (gen._CITIES, gen._JOBS, gen._PET_NAMES)
    train_only = {_norm(x) for p in split_pools for x in gen._split_pool(p, "train")}
    eval_only = {_norm(x) for p in split_pools for x in gen._split_pool(p, "eval")}
    n = right = wrong_train = 0
    by_kind: dict[str, list[int]] = {}  # relation -> [right, asked], every fact question
    for f in sorted(folder.glob("fact-*.json")):
        for row in json.loads(f.read_text())["rows"]:
            answers = row["answers"]
            answers = ast.literal_eval(answers) if isinstance(answers, str) else answers
            if row["system"] != "comet":
                continue
            cell = by_kind.setdefault(kind(answers[0]), [0, 0])
            cell[0] += float(row["acc"]) == 1.0
            cell[1] += 1
            if _norm(answers[0]) not in eval_only:
                continue
            n += 1
            if float(row["acc"]) == 1.0:
                right += 1
            else:
                wrong_train += _norm(row["prediction"]) in train_only
    return {"folder": str(folder), "eval_only_questions": n, "right": right, "wrong": n - right,
            "wrong_with_a_training_value": wrong_train, "by_kind": dict(sorted(by_kind.items()))}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    print("| run | questions (eval-only value) | right | wrong | wrong = a training value |")
    print("|---|---|---|---|---|")
    results = {arg: fact_errors(Path(arg)) for arg in argv}
    for arg, r in results.items():
        cells = (r["eval_only_questions"], r["right"], r["wrong"], r["wrong_with_a_training_value"])
        print(f"| {arg} | " + " | ".join(map(str, cells)) + " |")
    for arg, r in results.items():
        print(f"{arg}, right per relation: " + ", ".join(f"{k} {n_right}/{n}"
                                                           for k, (n_right, n) in r["by_kind"].items()))


if __name__ == "__main__":
    main(sys.argv[1:])
