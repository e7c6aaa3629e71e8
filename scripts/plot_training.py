"""Plot a training run's curve (loss and teacher-forced exact match vs training tokens) from log.jsonl.

    python scripts/plot_training.py runs/smollm2 docs/eval/training-curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(run: str, out: str, smooth: int = 10) -> None:
    rows = [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines() if x.strip()]
    tokens = [r["seen_tokens"] / 1e3 for r in rows]

    def avg(key: str) -> list[float]:
        vals = [r[key] for r in rows]
        return [sum(vals[max(0, i - smooth + 1):i + 1]) / len(vals[max(0, i - smooth + 1):i + 1])
                for i in range(len(vals))]

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(tokens, [r["loss"] for r in rows], alpha=0.3, label="per step")
    ax[0].plot(tokens, avg("loss"), label=f"mean of {smooth}")
    ax[0].set(xlabel="training tokens (k)", ylabel="answer-token loss (nats)", title="loss")
    ax[1].plot(tokens, avg("exact"), label=f"exact match, mean of {smooth}")
    ax[1].plot(tokens, [r["level"] / 16 for r in rows], label="curriculum level / 16", linestyle=":")
    ax[1].set(xlabel="training tokens (k)", ylim=(0, 1), title="teacher-forced exact match")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    last = rows[-1]
    print(f"{len(rows)} steps, {last['seen_tokens']} tokens, final mean loss {avg('loss')[-1]:.3f}, "
          f"mean exact {avg('exact')[-1]:.3f}, level {last['level']}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
