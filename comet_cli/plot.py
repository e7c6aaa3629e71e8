"""Plots (PNG files), behind the optional extra `comet-reader[plot]`: imported only when a plot is asked for.

`pyplot()` is the one way in for `comet eval --out`, the benchmarks and scripts/plot_training.py; without
matplotlib it raises a CometError with the install line.
"""

from __future__ import annotations

import os

from comet_core.errors import CometError

from .values import fmt_tokens

PLOT_HINT = "plotting needs matplotlib: pip install 'comet-reader[plot]'"


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend); a CometError naming the extra if it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise CometError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Lay out tightly, write the PNG and free the figure (the benchmarks' and scripts' figures)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def heatmap(summary: list[dict], path: str | os.PathLike, metric: str = "acc", title: str = "passkey accuracy"
            ) -> None:
    """A PNG heat map per (precision, system) of `comet eval` summary records: lengths x depths, each cell
    annotated with its %."""
    import numpy as np

    cells = [r for r in summary if r["depth"] not in (None, "all") and metric in r]
    if not cells:
        raise ValueError("nothing to draw")
    plt = pyplot()
    precisions = list(dict.fromkeys(r["precision"] for r in cells))
    systems = list(dict.fromkeys(r["system"] for r in cells))
    lengths = sorted({r["length"] for r in cells})
    depths = sorted({r["depth"] for r in cells})
    val = {(r["precision"], r["system"], r["length"], r["depth"]): r[metric] for r in cells}
    fig, axes = plt.subplots(len(precisions), len(systems), squeeze=False, layout="constrained",
                             figsize=(1.2 + 0.55 * len(depths) * len(systems),
                                      0.8 + 0.5 * len(lengths) * len(precisions) + 0.6 * len(precisions)))
    im = None
    for i, p in enumerate(precisions):
        for j, s in enumerate(systems):
            ax = axes[i][j]
            grid = np.array([[val.get((p, s, n, d), np.nan) * 100 for d in depths] for n in lengths])
            im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="lower")
            for a in range(len(lengths)):
                for b in range(len(depths)):
                    if not np.isnan(grid[a, b]):
                        ax.text(b, a, f"{grid[a, b]:.0f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_yticks(range(len(lengths)), [fmt_tokens(n) for n in lengths], fontsize=7)
            ax.set_xlabel("needle depth", fontsize=8)
            if j == 0:
                ax.set_ylabel("context tokens", fontsize=8)
            ax.set_title(f"{s} ({p})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="%", shrink=0.8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
