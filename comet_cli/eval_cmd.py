"""`comet eval passkey | fact | needle-qa | lm | summary`: CoMeT against its two baselines, on text the
training never saw.

Each command runs the systems one after another (a fresh model load each) on the same samples:
comet (the trained adapter), untrained (a fresh adapter with the same settings) and full (the base model
alone, full attention left-truncated to its window). Tables (or one JSON object with --json) go to stdout,
progress to stderr. Lengths are tokens; k = 1,024 (4k = 4,096), M = 1,048,576. The samples come from the
data folder that `python scripts/fetch_data.py` fills; it is checked before any model loads.

This module parses and displays; comet_core.evaluate measures. Errors are CometErrors and reach the main
group, which prints them in one line. The main CLI adds `eval_group` as `comet eval`;
`python -m comet_cli.eval_cmd ...` runs it standalone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from comet_core.config import PRECISIONS
from comet_core.tasks import TooShort

from .live import fmt_duration
from .options import QUIET, json_option, model_option, stack, threads_option
from .values import fmt_tokens, parse_choices, parse_depths, parse_lengths

ALL_DEPTHS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


@click.group("eval", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def eval_group() -> None:
    """Measure CoMeT against full attention truncated to the model's window and an untrained adapter.

    \b
      python scripts/fetch_data.py        # once: the held-out text the samples come from
      comet eval passkey --lengths 4k,16k,64k --out passkey.png
      comet eval fact --lengths 4k,16k --samples 4
      comet eval needle-qa --lengths 4k,32k --samples 4
      comet eval lm --lengths 4k,16k --json > lm.json
      comet eval summary --lengths 896,1920 --systems comet,full

    Samples come from the eval split (text the training never saw), the same for every system;
    --split train draws them as the training does instead (passkey, fact, incident, needle-qa).
    """


def common_options(samples: int, answers: bool = True, max_new_tokens: int = 32):
    """The options every eval command takes (--max-new-tokens only where answers are generated)."""
    answer = [click.option("--max-new-tokens", "-n", type=click.IntRange(1, 1024), default=max_new_tokens,
                           show_default=True, help="Longest answer, in tokens (greedy decoding).")] if answers else []
    return stack(
        model_option(),
        click.option("--adapter", metavar="PATH", type=click.Path(exists=True, dir_okay=False),
                     help="Trained CoMeT adapter (.safetensors). Default: the one shipped for the model."),
        click.option("--precision", "-p", default="4bit", show_default=True, metavar="LIST",
                     help=f"Weights, comma-separated from {', '.join(PRECISIONS)}: the run is repeated for each."),
        click.option("--device", metavar="DEVICE", help="cpu or cuda[:N] (default: cuda when available)."),
        threads_option("$OMP_NUM_THREADS, else every core"),
        click.option("--systems", default="comet,untrained,full", show_default=True,
                     help="Which of comet, untrained, full to run."),
        click.option("--samples", type=click.IntRange(1), default=samples, show_default=True,
                     help="Samples per (length, depth) cell."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples."),
        *answer,
        json_option("Print one JSON object on stdout instead of tables."),
        QUIET,
    )


SPLIT = click.option("--split", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
                     help="eval: text, names and wordings the training never saw. train: samples as the training "
                     "draws them, to see how much of what was learned carries over (no targets are checked).")


@eval_group.command()
@click.option("--lengths", default="4k,16k,64k", show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default=ALL_DEPTHS, show_default=True, help="Needle depths (0 = start, 1 = end).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map (PNG): one panel per system.")
@SPLIT
@common_options(samples=1)
def passkey(lengths: str, depths: str, out: str | None, **o) -> None:
    """Passkey retrieval: accuracy per (length, depth) cell (the key appears in the answer)."""
    run_eval("passkey", lengths, depths, out, o)


@eval_group.command()
@click.option("--lengths", default="4k,16k", show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default="0,0.25,0.5,0.75,1", show_default=True, help="Depths of the fact (0 = start).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map of accuracy (PNG).")
@SPLIT
@common_options(samples=4)
def fact(lengths: str, depths: str, out: str | None, **o) -> None:
    """One sentence of fact (a person's city, job, pet, ...) hidden in unrelated prose and asked in plain
    words, with names and phrasings the training never saw: accuracy (the answer appears in the reply)."""
    run_eval("fact", lengths, depths, out, o)


@eval_group.command()
@click.option("--lengths", default="4k,16k", show_default=True, help="Log lengths in tokens.")
@click.option("--depths", default="0,0.25,0.5,0.75,1", show_default=True, help="Depths of the line that states "
              "the cause (0 = start).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map of accuracy (PNG).")
@SPLIT
@common_options(samples=4)
def incident(lengths: str, depths: str, out: str | None, **o) -> None:
    """A service log in which one scheduled job fails among routine lines and unrelated warnings, and a
    question about why, with log formats, jobs, cause wordings and questions the training never saw:
    accuracy (a word that names the cause appears in the reply)."""
    run_eval("incident", lengths, depths, out, o)


@eval_group.command("needle-qa")
@click.option("--lengths", default="4k,32k", show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default="0,0.25,0.5,0.75,1", show_default=True, help="Depths of the SQuAD paragraph.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a heat map of F1 (PNG).")
@SPLIT
@common_options(samples=2)
def needle_qa(lengths: str, depths: str, out: str | None, **o) -> None:
    """A SQuAD paragraph hidden in unrelated text: exact match and token F1 against the gold answers."""
    run_eval("needle_qa", lengths, depths, out, o)


@eval_group.command()
@click.option("--lengths", default="4k,16k", show_default=True,
              help="Tokens before the scored chunk (k = length // chunk size chunks).")
@common_options(samples=4, answers=False)
def lm(lengths: str, **o) -> None:
    """Perplexity of chunk k+1 of a held-out play or essay: with memory, without, and full attention."""
    run_eval("lm", lengths, None, None, o)


@eval_group.command()
@click.option("--lengths", default="896,1920", show_default=True,
              help="Passage lengths in tokens: lengths the summaries file holds (scripts/make_summaries.py).")
@common_options(samples=10, max_new_tokens=96)
def summary(lengths: str, **o) -> None:
    """A held-out passage of a play or essay, then a request for a summary in words the training never used:
    token F1 against the summary the base model wrote with the whole passage in its window (the full system
    asks as that teacher was asked: at bf16 it writes the teacher's words, cut less)."""
    run_eval("summary", lengths, None, None, o)


# --- the run -------------------------------------------------------------------------------------------

def run_eval(task: str, lengths_text: str, depths_text: str | None, out: str | None, o: dict) -> None:
    """Check everything that can be checked without a model (arguments, output folder, plotting, data,
    adapter), then load and run each (precision, system) in turn."""
    try:
        lengths = parse_lengths(lengths_text)
        depths = parse_depths(depths_text) if depths_text is not None else None
        precisions = parse_choices(o["precision"], PRECISIONS, "precision")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if out:
        parent = Path(out).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise click.UsageError(f"cannot write {out}: folder {parent} does not exist or is not writable")
        from .plot import pyplot

        pyplot()  # matplotlib is an optional extra: say so now, not after the run
    adapter = adapter_path(o["model"], o["adapter"])

    from comet_core import evaluate as ev

    try:
        systems = parse_choices(o["systems"], ev.SYSTEMS, "system")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    ev.check_data(task)
    cfg = ev.adapter_config(adapter)
    samples, mnt, split = o["samples"], o.get("max_new_tokens", 0), o.get("split", "eval")
    n_depths = len(depths) if depths else 1
    progress = Progress({(p, s): len(lengths) * n_depths * samples for p in precisions for s in systems},
                        o["quiet"])
    progress.note(f"eval {task} ({split} split): {len(lengths)} length(s) x {n_depths} depth(s) x {samples} "
                  f"sample(s) x {len(systems)} system(s) x {len(precisions)} precision(s); the time left is estimated "
                  "from the seconds per sample so far")

    def on_row(r: dict) -> None:
        if r["system"] != "comet-nomem":
            progress.advance((r["precision"], r["system"]), r["seconds"], row_line(r))

    t0 = time.monotonic()
    cells, rows, window = None, [], None
    try:
        for p in precisions:
            for s in systems:
                progress.note(f"loading {s} ({p})")
                engine = ev.load_system(s, o["model"], p, adapter, device=o["device"], threads=o["threads"])
                window = ev.window(engine)
                if cells is None:
                    progress.note("building samples")
                    try:
                        cells = ev.make_cells(task, engine.tok, lengths, depths, samples, o["seed"], cfg.chunk_size,
                                              split)
                    except TooShort as e:  # a length the user chose
                        raise click.UsageError(f"--lengths: {e}") from None
                if task == "lm":
                    rows += ev.run_lm(s, engine, cells, cfg.chunk_size, on_row)
                else:
                    rows += ev.run_answers(s, engine, task, cells, mnt, on_row)
                engine = None  # freed before the next load (load_model collects garbage)
    finally:
        progress.stop()
    summary = ev.summarize(rows)
    targets = ev.check_targets(summary) if split == "eval" else []  # the targets are about text never seen
    if out:
        from .plot import heatmap

        heatmap(summary, out, "f1" if task == "needle_qa" else "acc",
                {"needle_qa": "needle-QA F1", "fact": "fact accuracy", "incident": "incident accuracy"}.get(
                    task, "passkey accuracy"))
        progress.note(f"wrote {out}")
    if o["as_json"]:
        result = {"task": task, "model": o["model"] or "smollm2", "adapter": str(adapter),
                  "adapter_config": cfg.to_dict(), "split": split, "seed": o["seed"], "samples": samples,
                  "lengths": lengths, "depths": depths, "precisions": precisions, "systems": systems,
                  "max_new_tokens": o.get("max_new_tokens"), "window": window,
                  "seconds": round(time.monotonic() - t0, 1), "summary": summary, "targets": targets,
                  "rows": rows}
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    print_tables(task, summary, targets)


def adapter_path(model: str | None, adapter: str | None) -> Path:
    """--adapter, else the adapter shipped for the model (engine.shipped_adapter)."""
    if adapter:
        return Path(adapter)
    from comet_core.engine import shipped_adapter

    path = shipped_adapter(model)
    if path is None:
        raise click.UsageError(f"no trained adapter is shipped for {model or 'smollm2'}: pass --adapter PATH, "
                               "e.g. --adapter runs/smollm2/adapter.safetensors")
    return path


# --- output ---------------------------------------------------------------------------------------------

def row_line(r: dict) -> str:
    where = f"{r['task']} {r['system']} {r['precision']} {fmt_tokens(r['length'])}"
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

    `planned` is the number of samples of each (precision, system). The time left is measured, not
    guessed: each run's remaining samples at that run's seconds per sample so far (a run not started yet:
    the mean over all samples so far). Loading and building samples are left out."""

    def __init__(self, planned: dict[tuple[str, str], int], quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet, self.planned = quiet, planned
        self.total = sum(planned.values())
        self.done = dict.fromkeys(planned, 0)
        self.spent = dict.fromkeys(planned, 0.0)
        self.bar = None
        if not quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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

    def left_s(self) -> float:
        """Seconds left, from the seconds per sample measured so far."""
        mean = sum(self.spent.values()) / max(1, sum(self.done.values()))
        return sum((self.planned[k] - n) * (self.spent[k] / n if n else mean) for k, n in self.done.items())

    def advance(self, key: tuple[str, str], seconds: float, line: str) -> None:
        """One sample of run `key` (precision, system) done in `seconds`."""
        self.done[key] += 1
        self.spent[key] += seconds
        done, eta = sum(self.done.values()), fmt_duration(self.left_s())
        if self.bar is not None:
            self.bar.update(self.task, completed=done, eta=eta, info=line)
        elif not self.quiet:
            print(f"comet eval: {line} [{done}/{self.total}, ETA {eta}]", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_tables(task: str, summary: list[dict], targets: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

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
                t.add_row(fmt_tokens(n), str(first["k"]),
                          *("-" if c is None else f"{c['ppl']:.2f}" + ("*" if c.get("truncated") else "")
                            for c in cells), str(first["n"]))
        elif task == "summary":
            t = Table(title=f"summary F1 % against the base model's own summary with the passage in its window ({p})")
            for col in ("system", "length", "F1", "n"):
                t.add_column(col, justify="left" if col == "system" else "right")
            for s in systems:
                for n in lengths:
                    if (p, s, n, None) in idx:
                        c = idx[(p, s, n, None)]
                        t.add_row(s, fmt_tokens(n), f"{c['f1'] * 100:.1f}", str(c["n"]))
        else:
            metric = "f1" if task == "needle_qa" else "acc"
            depths = sorted({r["depth"] for r in summary if r["depth"] not in (None, "all")})
            name = {"passkey": "passkey accuracy %", "fact": "fact accuracy % by depth",
                    "incident": "incident accuracy % by depth (the cause named)"}.get(
                task, "needle-QA F1 % by depth")
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
                    row = [s, fmt_tokens(n)]
                    row += [f"{idx[(p, s, n, d)][metric] * 100:.0f}" if (p, s, n, d) in idx else "-" for d in depths]
                    row.append(f"{a[metric] * 100:.1f}")
                    if task == "needle_qa":
                        row.append(f"{a['em'] * 100:.1f}")
                    row.append(str(a["n"]))
                    t.add_row(*row)
        console.print(t)
    for g in targets:
        extra = f" (full {g['full'] * 100:.1f}, gap {g['gap'] * 100:+.1f})" if "full" in g else ""
        console.print(f"target {g['task']} {g['precision']} {fmt_tokens(g['length'])}: {g['rule']}: "
                      f"{g['value'] * 100:.1f}{extra} {'PASS' if g['pass'] else 'FAIL'}", markup=False)


if __name__ == "__main__":  # through the main group: errors print as every comet error does
    from .main import cli

    cli(["eval", *sys.argv[1:]], prog_name="comet")
