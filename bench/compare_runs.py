"""Paired comparison of training runs forked from one checkpoint (an A/B of one setting): runs resumed from
the same train_state draw the same samples at the same step (the sample rng is part of the checkpoint), so
their per-sample training losses pair up. Per window of steps and task (and, with --by-level, the number
of chunks the samples read), each run's mean answer loss (nats per token, teacher-forced) and exact-match
rate on those same samples, the mean paired loss difference against the first run with its standard
error, then each run's held-out generated accuracy (eval.jsonl) at the steps both evaluated. With one run
folder: its own table, no differences.

    python -m bench.compare_runs runs/r3 runs/r4 --from 1758 --window 50
    python -m bench.compare_runs runs/r3 --from 1500 --window 500 --by-level
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from comet_core.tasks import TASKS


def _read(path: Path) -> dict[int, dict]:
    """step -> record; a line repeated after a resume: the last one counts."""
    if not path.exists():
        return {}
    return {r["step"]: r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}


def drawn_level(log: dict[int, dict], step: int, chunk_size: int) -> int | None:
    """Chunks read by the step's samples: logged as `drawn` since that field exists; before, inferred from the
    text tokens the step read per sample (seen_tokens grows by about level x chunk_size per sample; the
    levels double, so the nearest power of two is unambiguous). None where neither is known."""
    rec = log[step]
    if "drawn" in rec:
        return rec["drawn"]
    if step - 1 not in log:
        return None
    n = sum(len(v) for v in rec.get("tasks", {}).values())
    per = (rec["seen_tokens"] - log[step - 1]["seen_tokens"]) / max(1, n) / chunk_size
    return 2 ** round(math.log2(per)) if per > 0 else None


def paired(logs: list[dict[int, dict]], first: int, window: int, by_level: int = 0) -> list[dict]:
    """Rows: one per (window, task), or (window, task, level) when `by_level` (the chunk size) is given,
    over the steps every run logged from `first` on; a step whose samples differ between the runs (other
    tasks or sample counts: not forked from one checkpoint) stops it with SystemExit."""
    steps = sorted(set.intersection(*(set(k for k in log if k >= first) for log in logs)))
    rows: dict[tuple[int, str, int | None], dict] = {}
    for s in steps:
        recs = [log[s] for log in logs]
        shapes = [{t: len(v) for t, v in r.get("tasks", {}).items()} for r in recs]
        if any(sh != shapes[0] for sh in shapes):
            raise SystemExit(f"step {s}: the runs drew different samples ({shapes}); not forked from one "
                             f"checkpoint, or a different --tasks/--accum")
        w0 = first + (s - first) // window * window
        level = drawn_level(logs[0], s, by_level) if by_level else None
        for task in shapes[0]:
            row = rows.setdefault((w0, task, level), {"steps": f"{w0}-{w0 + window - 1}", "task": task,
                                                      "level": level, "n": 0, "loss": [0.0] * len(logs),
                                                      "exact": [0] * len(logs), "d": [[] for _ in logs[1:]]})
            for i, r in enumerate(recs):
                for loss, ok in r["tasks"][task]:
                    row["loss"][i] += loss
                    row["exact"][i] += ok
            base = recs[0]["tasks"][task]
            for d, r in zip(row["d"], recs[1:], strict=True):  # per arm: its loss - the base's, sample by sample
                d += [li - l0 for (l0, _), (li, _) in zip(base, r["tasks"][task], strict=True)]
            row["n"] += len(base)
    out = []
    for row in rows.values():
        n = row["n"]
        res = {"steps": row["steps"], "task": row["task"], "level": row["level"], "n": n,
               "loss": [round(x / n, 3) for x in row["loss"]], "exact": [round(x / n, 3) for x in row["exact"]]}
        diffs = []
        for d in row["d"]:
            mean = sum(d) / len(d)
            se = math.sqrt(sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1) / len(d))
            diffs.append([round(mean, 3), round(se, 3)])
        out.append(dict(res, diff=diffs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (log.jsonl, eval.jsonl); the first is the base")
    ap.add_argument("--by-level", action="store_true", help="a row per level (chunks read) too")
    ap.add_argument("--chunk-size", type=int, default=256, help="the runs' c (to infer levels of old logs)")
    ap.add_argument("--from", dest="first", type=int, default=0, help="first step compared (the fork's next step)")
    ap.add_argument("--window", type=int, default=50, help="steps per row")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    logs = [_read(r / "log.jsonl") for r in a.runs]
    rows = paired(logs, a.first, a.window, a.chunk_size if a.by_level else 0)
    names = [r.name for r in a.runs]
    print("training samples, teacher-forced" + (f" (the same samples in every run); diff = run - {names[0]}, "
                                                 "mean nats/token ± standard error" if len(names) > 1 else ""))
    heads = "  ".join(f"{n + ' loss':>10} {n + ' exact':>10}" for n in names)
    print(f"{'steps':<11} {'task':<8} {'level':>5} {'n':>4}  {heads}  "
          + "  ".join(f"{'diff ' + n:>16}" for n in names[1:]))
    for r in sorted(rows, key=lambda r: (r["steps"], r["task"], r["level"] or 0)):
        cells = "  ".join(f"{lo:>10.3f} {ex:>10.3f}" for lo, ex in zip(r["loss"], r["exact"], strict=True))
        diffs = "  ".join(f"{m:>+9.3f} ± {se:.3f}" for m, se in r["diff"])
        print(f"{r['steps']:<11} {r['task']:<8} {r['level'] or '':>5} {r['n']:>4}  {cells}  {diffs}")
    evals = [_read(r / "eval.jsonl") for r in a.runs]
    shared = sorted(set.intersection(*(set(k for k in e if k >= a.first) for e in evals)))
    print("\nheld-out generated accuracy (eval.jsonl) at the steps every run evaluated")
    held = []
    for s in shared:
        recs = [e[s] for e in evals]
        tasks = [t for t in recs[0] if t in TASKS]
        held.append({"step": s, "level": recs[0].get("level"),
                     **{t: [r.get(t) for r in recs] for t in tasks}})
        print(f"step {s} level {recs[0].get('level')}: "
              + "; ".join(f"{t} " + " / ".join(f"{n} {r.get(t)}" for n, r in zip(names, recs, strict=True))
                          for t in tasks))
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps({"runs": [str(r) for r in a.runs], "from": a.first, "window": a.window,
                                          "training": rows, "heldout": held}, indent=1) + "\n")


if __name__ == "__main__":
    main()
