"""`comet eval passkey | needle-qa | lm`: CoMeT against its two baselines, on text the training never saw.

Each command runs the systems one after another (a fresh model load each) on the same samples:
comet (the trained adapter), untrained (a fresh adapter with the same settings) and full (the base model
alone, full attention left-truncated to its window). Tables (or one JSON object with --json) go to stdout,
progress to stderr. Lengths are tokens; k = 1,024 (4k = 4,096), M = 1,048,576.

The main CLI adds `eval_group` as `comet eval`; `python -m comet_cli.eval_cmd ...` runs it standalone.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import click

PRECISIONS = ("4bit", "8bit", "bf16", "fp32")
ALL_DEPTHS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"
SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "comet_core" / "adapters" / "smollm2.safetensors"


@click.group("eval", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def eval_group() -> None:
    """Measure CoMeT against full attention truncated to the model's window and an untrained adapter.

    \b
      comet eval passkey --lengths 4k,16k,64k --out passkey.png
      comet eval needle-qa --lengths 4k,32k --samples 4
      comet eval lm --lengths 4k,16k --json > lm.json

    Samples come from the eval split (text the training never saw), the same for every system.
    """


def common_options(samples: int):
    def deco(f):
        @click.option("--model", "-m", metavar="MODEL", help="'smollm2' (default), a Hugging Face folder or a .gguf.")
        @click.option("--adapter", metavar="PATH", type=click.Path(dir_okay=False),
                      help=f"Trained CoMeT adapter (default: {SHIPPED_ADAPTER.name} shipped with comet, if any).")
        @click.option("--precision", "-p", default="4bit", show_default=True,
                      help="Comma-separated list of 4bit, 8bit, bf16, fp32: the whole run is repeated for each.")
        @click.option("--systems", default="comet,untrained,full", show_default=True,
                      help="Which of comet, untrained, full to run.")
        @click.option("--samples", type=click.IntRange(1), default=samples, show_default=True,
                      help="Samples per (length, depth) cell.")
        @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
        @click.option("--max-new-tokens", "-n", type=click.IntRange(1, 1024), default=32, show_default=True)
        @click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout instead of tables.")
        @click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)

        return wrapper

    return deco


@eval_group.command()
@click.option("--lengths", default="4k,16k,64k", show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default=ALL_DEPTHS, show_default=True, help="Needle depths (0 = start, 1 = end).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map (PNG): one panel per system.")
@common_options(samples=1)
def passkey(lengths: str, depths: str, out: str | None, **o) -> None:
    """Passkey retrieval: accuracy per (length, depth) cell (the key appears in the answer)."""
    run_eval("passkey", lengths, depths, out, o)


@eval_group.command("needle-qa")
@click.option("--lengths", default="4k,32k", show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default="0,0.25,0.5,0.75,1", show_default=True, help="Depths of the SQuAD paragraph.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map of F1 (PNG).")
@common_options(samples=2)
def needle_qa(lengths: str, depths: str, out: str | None, **o) -> None:
    """A SQuAD paragraph hidden in unrelated text: exact match and token F1 against the gold answers."""
    run_eval("needle_qa", lengths, depths, out, o)


@eval_group.command()
@click.option("--lengths", default="4k,16k", show_default=True,
              help="Tokens before the scored chunk (k = length // chunk size chunks).")
@common_options(samples=4)
def lm(lengths: str, **o) -> None:
    """Perplexity of chunk k+1 of a held-out play or essay: with memory, without, and full attention."""
    run_eval("lm", lengths, None, None, o)


# --- the run -------------------------------------------------------------------------------------------

def run_eval(task: str, lengths_text: str, depths_text: str | None, out: str | None, o: dict) -> None:
    from comet_core import evaluate as ev

    try:
        lengths = ev.parse_lengths(lengths_text)
        depths = ev.parse_depths(depths_text) if depths_text is not None else None
        precisions = ev.parse_choices(o["precision"], PRECISIONS, "precision")
        systems = ev.parse_choices(o["systems"], ev.SYSTEMS, "system")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if out:
        parent = Path(out).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise click.UsageError(f"cannot write {out}: folder {parent} does not exist or is not writable")
    adapter = adapter_path(o["model"], o["adapter"])
    try:
        cfg = ev.adapter_config(adapter)
    except Exception as e:
        raise click.ClickException(str(e)) from None
    samples, mnt = o["samples"], o["max_new_tokens"]
    n_depths = len(depths) if depths else 1
    est = {(p, s): ev.estimate_seconds(task, s, p, lengths, n_depths, samples, mnt, chunk_size=cfg.chunk_size)
           for p in precisions for s in systems}
    progress = Progress(sum(est.values()), o["quiet"])
    progress.note(f"eval {task}: {len(lengths)} length(s) x {n_depths} depth(s) x {samples} sample(s) x "
                  f"{len(systems)} system(s) x {len(precisions)} precision(s); estimated "
                  f"{fmt_duration(sum(est.values()))} on 2 CPU cores (" +
                  ", ".join(f"{s} {p} {fmt_duration(t)}" for (p, s), t in est.items()) + ")")

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)

    def on_row(r: dict) -> None:
        if r["system"] == "comet-nomem":
            return
        t = ev.estimate_seconds(task, r["system"], r["precision"], [r["length"]], 1, 1, mnt,
                                chunk_size=cfg.chunk_size)
        progress.advance(t, r["seconds"], row_line(r))

    t0 = time.monotonic()
    cells, rows, window = None, [], None
    try:
        for p in precisions:
            for s in systems:
                progress.note(f"loading {s} ({p})")
                system = ev.load_system(s, o["model"], p, adapter)
                window = system.window
                if cells is None:
                    progress.note("building samples")
                    cells = ev.make_cells(task, system.tok, lengths, depths, samples, o["seed"], cfg.chunk_size)
                if task == "lm":
                    rows += ev.run_lm(system, cells, cfg.chunk_size, on_row)
                else:
                    rows += ev.run_answers(system, task, cells, mnt, on_row)
                system = None  # freed before the next load (load_model collects garbage)
    except Exception as e:
        if type(e).__name__ in ("ModelError", "AdapterError", "DataMissingError"):
            raise click.ClickException(str(e)) from None
        raise
    finally:
        progress.stop()
    summary = ev.summarize(rows)
    targets = ev.check_targets(summary)
    if out:
        ev.heatmap(summary, out, "f1" if task == "needle_qa" else "acc",
                   "needle-QA F1" if task == "needle_qa" else "passkey accuracy")
        progress.note(f"wrote {out}")
    if o["as_json"]:
        result = {"task": task, "model": o["model"] or "smollm2", "adapter": str(adapter),
                  "adapter_config": cfg.to_dict(), "split": "eval", "seed": o["seed"], "samples": samples,
                  "lengths": lengths, "depths": depths, "precisions": precisions, "systems": systems,
                  "max_new_tokens": mnt, "window": window, "estimate_s": round(sum(est.values()), 1),
                  "seconds": round(time.monotonic() - t0, 1), "summary": summary, "targets": targets,
                  "rows": rows}
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    print_tables(task, summary, targets)


def adapter_path(model: str | None, adapter: str | None) -> Path:
    if adapter:
        if not Path(adapter).is_file():
            raise click.UsageError(f"--adapter {adapter}: no such file")
        return Path(adapter)
    if model not in (None, "smollm2"):
        raise click.UsageError("no trained adapter is shipped for this model: pass --adapter PATH")
    if not SHIPPED_ADAPTER.is_file():
        raise click.UsageError(f"no shipped adapter ({SHIPPED_ADAPTER} is missing): pass --adapter PATH, "
                               "e.g. --adapter runs/smollm2/adapter.safetensors")
    return SHIPPED_ADAPTER


# --- output ---------------------------------------------------------------------------------------------

def fmt_duration(s: float) -> str:
    s = max(0, round(s))
    h, rem = divmod(s, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def row_line(r: dict) -> str:
    from comet_core.evaluate import fmt_length

    where = f"{r['task']} {r['system']} {r['precision']} {fmt_length(r['length'])}"
    if r["depth"] is not None:
        where += f" depth {r['depth']:g}"
    where += f" #{r['sample'] + 1}"
    if "ppl" in r:
        return f"{where}: ppl {r['ppl']:.2f} ({r['seconds']:.0f}s)"
    score = f"{'ok' if r['acc'] else 'miss'}" if "acc" in r else f"f1 {r['f1']:.2f}"
    pred = " ".join(r["prediction"].split())
    return f"{where}: {score} {pred[:40]!r} ({r['seconds']:.0f}s)"


class Progress:
    """Progress on stderr: a rich bar on a terminal, plain lines otherwise, nothing with --quiet.
    The ETA scales the remaining estimate by how fast the samples so far met theirs."""

    def __init__(self, total_s: float, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet, self.total, self.done, self.spent = quiet, max(total_s, 1e-9), 0.0, 0.0
        self.bar = None
        if not quiet and self.console.is_terminal:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                           TextColumn("ETA {task.fields[eta]}  {task.fields[info]}"), console=self.console)
            self.task = self.bar.add_task("eval", total=self.total, eta="?", info="")
            self.bar.start()

    def note(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(msg, markup=False)
        else:
            print(f"comet eval: {msg}", file=sys.stderr, flush=True)

    def advance(self, est_s: float, spent_s: float, line: str) -> None:
        """One sample done: it was estimated at est_s and took spent_s (loading and sample building are
        left out of the speed, so the ETA is right from the first sample on)."""
        self.done += est_s
        self.spent += spent_s
        speed = self.spent / max(self.done, 1e-9)
        eta = fmt_duration(max(0.0, self.total - self.done) * speed)
        if self.bar is not None:
            self.bar.update(self.task, completed=min(self.done, self.total), eta=eta, info=line)
        elif not self.quiet:
            print(f"comet eval: {line} [{min(1.0, self.done / self.total):.0%}, ETA {eta}]", file=sys.stderr,
                  flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_tables(task: str, summary: list[dict], targets: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from comet_core.evaluate import fmt_length

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200
    precisions = list(dict.fromkeys(r["precision"] for r in summary))
    systems = list(dict.fromkeys(r["system"] for r in summary))
    lengths = sorted({r["length"] for r in summary})
    idx = {(r["precision"], r["system"], r["length"], r["depth"]): r for r in summary}
    for p in precisions:
        if task == "lm":
            t = Table(title=f"lm perplexity of chunk k+1 ({p})",
                      caption="* full attention truncated to its window" if any(
                          r.get("truncated") for r in summary) else None)
            t.add_column("length", justify="right")
            t.add_column("k", justify="right")
            for s in systems:
                t.add_column(s, justify="right")
            t.add_column("n", justify="right")
            for n in lengths:
                cells = [idx.get((p, s, n, None)) for s in systems]
                first = next(c for c in cells if c)
                t.add_row(fmt_length(n), str(first["k"]),
                          *("-" if c is None else f"{c['ppl']:.2f}" + ("*" if c.get("truncated") else "")
                            for c in cells), str(first["n"]))
        else:
            metric = "acc" if task == "passkey" else "f1"
            depths = sorted({r["depth"] for r in summary if r["depth"] not in (None, "all")})
            name = "passkey accuracy %" if task == "passkey" else "needle-QA F1 % by depth"
            t = Table(title=f"{name} ({p})")
            t.add_column("system")
            t.add_column("length", justify="right")
            for d in depths:
                t.add_column(f"{d:g}", justify="right")
            t.add_column("all", justify="right")
            if task == "needle_qa":
                t.add_column("EM all", justify="right")
            t.add_column("n", justify="right")
            for s in systems:
                for n in lengths:
                    if (p, s, n, "all") not in idx:
                        continue
                    a = idx[(p, s, n, "all")]
                    row = [s, fmt_length(n)]
                    row += [f"{idx[(p, s, n, d)][metric] * 100:.0f}" if (p, s, n, d) in idx else "-" for d in depths]
                    row.append(f"{a[metric] * 100:.1f}")
                    if task == "needle_qa":
                        row.append(f"{a['em'] * 100:.1f}")
                    row.append(str(a["n"]))
                    t.add_row(*row)
        console.print(t)
    for g in targets:
        extra = f" (full {g['full'] * 100:.1f}, gap {g['gap'] * 100:+.1f})" if "full" in g else ""
        console.print(f"target {g['task']} {g['precision']} {fmt_length(g['length'])}: {g['rule']}: "
                      f"{g['value'] * 100:.1f}{extra} {'PASS' if g['pass'] else 'FAIL'}", markup=False)


if __name__ == "__main__":
    eval_group(prog_name="comet eval")
