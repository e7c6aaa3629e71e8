"""Plot training curves (loss, teacher-forced exact match, per-task loss vs training tokens) from log.jsonl,
and the held-out accuracy of generated answers from eval.jsonl next to it (runs that evaluated).

Several runs are drawn one after the other (a run started with --init-adapter from the previous one's
adapter continues its token count):

    python scripts/plot_training.py docs/eval/training-log.jsonl docs/eval/training-log-s3.jsonl curve.png
    python scripts/plot_training.py checkpoints/r1 r1.png          # a run folder: log.jsonl + eval.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comet_cli.plot import pyplot, save
from comet_core.errors import CometError


def load(runs: list[str]) -> list[dict]:
    """Rows of all runs in order; seen_tokens made cumulative across runs, `run` = index of the run."""
    rows: list[dict] = []
    for i, run in enumerate(runs):
        p = Path(run)
        p = p / "log.jsonl" if p.is_dir() else p
        offset = rows[-1]["seen_tokens"] if rows else 0
        for line in p.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                while rows and rows[-1]["run"] == i and rows[-1]["step"] >= r["step"]:
                    rows.pop()  # a run killed after its last checkpoint and resumed from it: keep the redone steps
                rows.append({**r, "seen_tokens": r["seen_tokens"] + offset, "run": i})
    return rows


def load_evals(runs: list[str], rows: list[dict]) -> list[dict]:
    """Held-out evaluations (eval.jsonl beside each log.jsonl), tokens and seconds made cumulative like `load`."""
    evals: list[dict] = []
    for i, run in enumerate(runs):
        p = Path(run)
        p = (p if p.is_dir() else p.parent) / "eval.jsonl"
        before = [r for r in rows if r["run"] < i]
        tok0 = before[-1]["seen_tokens"] if before else 0
        sec0 = before[-1]["elapsed"] if before else 0.0
        if p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    e = json.loads(line)
                    while evals and evals[-1]["run"] == i and evals[-1]["step"] >= e["step"]:
                        evals.pop()
                    evals.append({**e, "seen_tokens": e["seen_tokens"] + tok0, "elapsed": e["elapsed"] + sec0,
                                  "run": i})
    return evals


def smooth(vals: list[float], n: int) -> list[float]:
    return [sum(vals[max(0, i - n + 1):i + 1]) / len(vals[max(0, i - n + 1):i + 1]) for i in range(len(vals))]


def main(runs: list[str], out: str, n: int = 20) -> None:
    plt = pyplot()
    rows = load(runs)
    tokens = [r["seen_tokens"] / 1e3 for r in rows]
    evals = load_evals(runs, rows)
    fig, ax = plt.subplots(1, 4 if evals else 3, figsize=(20 if evals else 15, 3.8))
    ax[0].plot(tokens, [r["loss"] for r in rows], alpha=0.25, label="per step")
    ax[0].plot(tokens, smooth([r["loss"] for r in rows], n), label=f"mean of {n} steps")
    ax[0].set(xlabel="training tokens (k)", ylabel="answer-token loss (nats)", title="loss, all tasks")
    ax[1].plot(tokens, smooth([r["exact"] for r in rows], n), label=f"exact match, mean of {n} steps")
    ax[1].plot(tokens, [r["level"] / 16 for r in rows], label="curriculum level / 16", linestyle=":")
    ax[1].set(xlabel="training tokens (k)", ylim=(0, 1), title="teacher-forced exact match")
    per_task: dict[str, list[tuple[float, float]]] = {}
    for t, r in zip(tokens, rows, strict=True):
        for task, results in r.get("tasks", {}).items():
            per_task.setdefault(task, []).extend((t, loss) for loss, _ in results)
    for task, pts in sorted(per_task.items()):
        ax[2].plot([p[0] for p in pts], smooth([p[1] for p in pts], n), label=task)
    ax[2].set(xlabel="training tokens (k)", ylabel="answer-token loss (nats)",
              title=f"per task (logged from run {1 + min((r['run'] for r in rows if 'tasks' in r), default=0)})")
    if evals:
        ev_tok = [e["seen_tokens"] / 1e3 for e in evals]
        ax[3].plot(ev_tok, [e["acc"] for e in evals], marker="o", label="held-out accuracy (generated)")
        ax[3].plot(ev_tok, [min(1.0, e["level"] / 32) for e in evals], linestyle=":", label="level (chunks) / 32")
        ax[3].set(xlabel="training tokens (k)", ylim=(0, 1), title="held-out generated answers")
    for i in range(1, len(runs)):
        start = next(t for t, r in zip(tokens, rows, strict=True) if r["run"] == i)
        for a in ax:
            a.axvline(start, color="grey", linewidth=0.8, linestyle="--")
    for a in ax:
        a.legend(fontsize=8)
    save(fig, out)
    last, loss = rows[-1], smooth([r["loss"] for r in rows], n)[-1]
    print(f"{len(rows)} steps, {last['seen_tokens']} tokens, final mean loss {loss:.3f}, level {last['level']}")
    for i in range(len(runs)):  # per run and task: mean answer loss / exact match, whole run and last 100 steps
        run = [r for r in rows if r["run"] == i]
        for label, part in (("whole run", run), ("last", run[-100:])):
            res: dict[str, list] = {}
            for r in part:
                for task, results in r.get("tasks", {}).items():
                    res.setdefault(task, []).extend(results)
            cells = [f"{t} {sum(x[0] for x in v) / len(v):.2f}/{sum(x[1] for x in v) / len(v):.2f}"
                     for t, v in sorted(res.items())]
            if cells:
                print(f"run {i + 1} ({label}, {len(part)} steps), answer loss/exact: {', '.join(cells)}")
    if evals:
        print("held-out generated accuracy: step, training tokens, wall minutes of training, level (chunks), accuracy")
        for e in evals:
            tasks = ", ".join(f"{k} {v:.2f}" for k, v in e.items() if isinstance(v, float) and k not in
                              ("acc", "elapsed", "seconds"))
            print(f"  {e['step']:5d}  {e['seen_tokens']:>9,}  {e['elapsed'] / 60:6.1f}  {e['level']:3d}  "
                  f"{e['acc']:.2f}  ({tasks})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:-1], sys.argv[-1])
    except CometError as e:
        sys.exit(f"plot_training: error: {e}")
