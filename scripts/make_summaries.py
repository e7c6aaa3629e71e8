#!/usr/bin/env python
"""Write the summaries that ``comet train --tasks ...,summary:W`` distils: passages of the plays and essays
in the data folder, each summarised by the base model with the whole passage in its window (greedy, the
answer rule comet uses), into ``<data>/summaries/{train,eval}.jsonl`` (see comet_core/tasks/summaries.py).

The teacher is asked in a bare user turn right after the passage. With the chat template's default system
turn in between (how comet's questions are laid out), SmolLM2 summarised 2 of 3 held-out passages as
unrelated text ("the COVID-19 pandemic" for The Merchant of Venice); without it, all 3 were about the passage.

    python scripts/fetch_data.py            # once: the text
    python scripts/make_summaries.py        # --train 48 --eval 10 passages per length: ~30 min on 2 cores
    python scripts/make_summaries.py --train 96    # more: a rerun adds what is missing, nothing twice

Each passage is drawn from a seed of its own (split, length, index), so the same data folder gives the
same passages on every machine. A line is written (and flushed to disk) as soon as its summary is done:
stopping loses at most the passage in progress, and a rerun goes on from there. A passage whose summary
has no full sentence in --max-new-tokens is recorded without one (and not retried).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from comet_core.state_io import atomic_write  # noqa: E402
from comet_core.tasks.summaries import LENGTHS, cut_summary, draw_passage, summaries_file  # noqa: E402


def done_keys(path: Path) -> set[str]:
    """Keys already in the file. A damaged file (a line cut by a crash, or not JSON) is rewritten with its
    good lines only, atomically."""
    if not path.exists():
        return set()
    good, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            rec = json.loads(line)
            if not line.endswith("\n") or "key" not in rec:
                raise ValueError
            good.append((rec["key"], line))
        except ValueError:
            bad += 1
    if bad:
        print(f"make_summaries: {path}: dropped {bad} damaged line(s)", file=sys.stderr)
        atomic_write(path, "".join(line for _, line in good).encode())
    return {k for k, _ in good}


def write_split(split: str, tok: Any, answer: Callable[[str, str], str], lengths: list[int], count: int,
                teacher: dict, log: Callable[[str], None] = print) -> int:
    """Summarise `count` passages of each length of `split` that the file lacks; returns how many were
    written. answer(passage, question) is the teacher's reply."""
    path = summaries_file(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(path)
    todo = [(n, i) for n in lengths for i in range(count) if f"{split}:{n}:{i}" not in done]
    t0, written = time.monotonic(), 0
    with path.open("a", encoding="utf-8") as f:
        for k, (n, i) in enumerate(todo):
            key = f"{split}:{n}:{i}"
            context, question, meta = draw_passage(tok, n, random.Random(f"summary:{key}"), split)
            summary = cut_summary(answer(context, question))
            rec = {"key": key, "split": split, "length": n, **meta, "question": question, "context": context,
                   "summary": summary, "teacher": teacher}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += 1
            dt = time.monotonic() - t0
            log(f"make_summaries: {key} ({k + 1}/{len(todo)}, {dt / (k + 1):.1f} s each, "
                f"ETA {dt / (k + 1) * (len(todo) - k - 1) / 60:.0f} min): "
                + (repr(summary[:100]) if summary else "no full sentence: kept without a summary"))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct, the one comet "
                                                  "trains on; distillation wants the same model)")
    ap.add_argument("--precision", default="bf16", help="teacher weights (default bf16, as training reads)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    ap.add_argument("--train", type=int, default=48, help="passages per length in the train split")
    ap.add_argument("--eval", type=int, default=10, help="passages per length in the eval split")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                    help="passage lengths in tokens (default: the ones training draws)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="longest summary, in tokens")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]

    from comet_core import evaluate as ev
    from comet_core.errors import CometError
    from comet_core.loading import model_fingerprint

    try:
        for split in ("train", "eval"):
            ev.documents("plays", split), ev.documents("essays", split)  # the data folder, before the model
        e = ev.load_system("full", args.model, args.precision, None, threads=args.threads)
    except CometError as err:
        print(f"make_summaries: error: {err}", file=sys.stderr)
        return 1
    teacher = {"model": e.name, "fingerprint": model_fingerprint(e.lm), "precision": args.precision,
               "max_new_tokens": args.max_new_tokens}
    window = ev.window(e)

    def answer(context: str, question: str) -> str:
        return ev.answer_full_attention(e.lm, e.tok, context, question, window, args.max_new_tokens,
                                        system_turn=False)

    try:
        for split, count in (("eval", args.eval), ("train", args.train)):
            n = write_split(split, e.tok, answer, lengths, count, teacher,
                            log=lambda s: print(s, file=sys.stderr, flush=True))
            print(f"make_summaries: {summaries_file(split)}: {n} new", file=sys.stderr)
    except KeyboardInterrupt:
        print("make_summaries: interrupted; every finished summary is on disk: rerun to go on", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
