"""How the missed pass keys were wrong: the right key with one digit dropped (a digit that occurs twice in
the key, or once), two digits swapped, one digit changed, or something else; counted over every
passkey-*.json (comet rows) of each folder written by docs/eval/answers.sh.

    python -m bench.passkey_errors docs/eval/r10-s190 docs/eval/r11-s50
"""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

KINDS = ("dropped a repeated digit", "dropped a digit", "swapped two digits", "changed a digit", "other")


def miss_kind(key: str, said: str) -> str:
    """How `said` differs from `key` (one of KINDS)."""
    said = said.strip().rstrip(".")
    dropped = [i for i in range(len(key)) if key[:i] + key[i + 1:] == said]
    if dropped:
        return KINDS[0] if key.count(key[dropped[0]]) > 1 else KINDS[1]
    diff = [i for i in range(min(len(key), len(said))) if key[i] != said[i]] if len(key) == len(said) else None
    if diff is not None and len(diff) == 2 and key[diff[0]] == said[diff[1]] and key[diff[1]] == said[diff[0]]:
        return KINDS[2]
    if diff is not None and len(diff) == 1:
        return KINDS[3]
    return KINDS[4]


def comet_rows(folder: Path) -> Iterator[tuple[dict, dict, str]]:
    """(run, row, key) for every comet row of every passkey-*.json in `folder` (run: the file's JSON)."""
    for f in sorted(folder.glob("passkey-*.json")):
        run = json.loads(f.read_text())
        for row in run["rows"]:
            if row["system"] == "comet":
                answers = row["answers"]
                yield run, row, (ast.literal_eval(answers) if isinstance(answers, str) else answers)[0]


def passkey_errors(folder: Path) -> dict:
    """Asked, right, and the misses by kind, with the (key, answer) pairs of the misses."""
    asked, kinds, misses = 0, Counter(), []
    for _, row, key in comet_rows(folder):
        asked += 1
        if float(row["acc"]) == 1.0:
            continue
        kinds[miss_kind(key, row["prediction"])] += 1
        misses.append((key, row["prediction"]))
    return {"folder": str(folder), "asked": asked, "missed": len(misses),
            "kinds": {k: kinds[k] for k in KINDS}, "misses": misses}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    print("| run | asked | missed | " + " | ".join(KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    results = [passkey_errors(Path(a)) for a in argv]
    for r in results:
        print(f"| {r['folder']} | {r['asked']} | {r['missed']} | " + " | ".join(str(r["kinds"][k]) for k in KINDS)
              + " |")
    for r in results:
        print(f"{r['folder']}: " + ", ".join(f"{k} -> {p}" for k, p in r["misses"]))


if __name__ == "__main__":
    main(sys.argv[1:])
