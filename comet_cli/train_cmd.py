"""`comet train`: fine-tune CoMeT memory onto a base model, with a live progress bar and resume.

Importing this module is cheap (no torch): the defaults shown by `--help` come from the torch-free
`comet_core.train.args`; torch, the trainer and the model load only once the arguments and the data folder
have been checked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, fields

import click

from comet_core.tasks import TASKS
from comet_core.train.args import TrainArgs

from .options import QUIET, VERBOSE, json_option, model_option, precision_option, stack, threads_option

_DEFAULTS = TrainArgs()


def _arg(name: str, help: str, type=None, flag: str | None = None, metavar: str | None = None):
    """The option for TrainArgs field `name`, with the field's default (shown in --help)."""
    default = getattr(_DEFAULTS, name)
    return click.option(flag or "--" + name.replace("_", "-"), name, type=type, default=default,
                        show_default=default is not None, metavar=metavar, help=help)


POS, COUNT, SHARE = click.IntRange(1), click.IntRange(0), click.FloatRange(0.0, 1.0)

train_options = stack(
    _arg("out", "Run folder: adapter.safetensors, train_state.safetensors (optimizer, progress), log.jsonl "
                "(one line per step), eval.jsonl (held-out evaluations).", metavar="DIR"),
    model_option(),
    precision_option("Backbone weights while training: those the adapter will read with (comet reads at "
                     "4bit). An adapter trained on bf16 weights lost 20 points of pass keys read at 4bit; "
                     "a step at 4bit took 8% longer than at bf16. Only the memory nets and LoRA "
                     "(fp32) are trained.", default=_DEFAULTS.precision),
    _arg("device", "cpu or cuda[:N] (default: cuda when available; under torchrun each process takes the GPU "
                   "of its LOCAL_RANK).", metavar="DEVICE"),
    threads_option("every core, divided among the processes of a torchrun launch"),
    _arg("steps", "Optimizer steps to reach (with --resume: counting the steps already done).", POS),
    _arg("accum", "Samples per step, run as one batch.", POS),
    _arg("workers", "Processes that draw the next batches while a step runs (0 = the training process draws "
                    "each batch before its step). Worth it on a GPU, where drawing a batch took a quarter of "
                    "a step; the samples differ from those of --workers 0.", COUNT, metavar="N"),
    _arg("lr", "Learning rate of the memory nets and beacon embeddings (AdamW, after a short warm-up).", float),
    _arg("lora_lr", "Learning rate of the LoRA weights.", float),
    _arg("ema", "Average the trained weights over the last ~1/(1-DECAY) steps (e.g. 0.99); the held-out "
                "evaluation and the saved adapter use the average. 0 = off.", float, metavar="DECAY"),
    _arg("end_weight", "Loss weight of each answer's last token and its end of turn (1 = like every other "
                       "answer token). Above 1 it teaches where an answer stops: pass keys missed their last "
                       "digit. The logged loss is the weighted one.", click.FloatRange(0.0, min_open=True),
         metavar="W"),
    _arg("lora_rank", "Rank of the LoRA on the backbone's linears; 0 = no LoRA.", COUNT),
    _arg("lora_targets", "Linears that get LoRA: q/k/v/o_proj, gate/up/down_proj. Default: q_proj,v_proj for a new "
                         "adapter; with --resume or --init-adapter, the adapter's own, and targets listed here "
                         "that it lacks are added (starting at zero).", metavar="LIST"),
    _arg("chunk_size", "Memory setting c: text tokens per chunk.", POS),
    _arg("stride", "Memory setting s: a temp beacon after every N text tokens.", POS),
    _arg("n_global", "Memory setting G: global memory slots (and beacons).", POS),
    _arg("budget", "Memory setting B_T: the newest N temp-memory entries kept.", POS),
    _arg("priming", "Text tokens kept live before the question (the answer layout); 0 = the question alone meets "
                    "the memory.", int),
    _arg("min_chunks", "First curriculum level: context chunks read into memory.", POS),
    _arg("max_chunks", "Last curriculum level (levels double from --min-chunks); a resumed run above it goes "
         "back to it.", POS),
    _arg("promote_at", "Held-out accuracy that moves the curriculum to the next level.", SHARE),
    _arg("eval_every", "Held-out generated accuracy every N steps (OUT/eval.jsonl); it gates the curriculum. "
                       "0 = off (then the teacher-forced exact match of training samples gates it).", COUNT),
    _arg("eval_samples", "Held-out samples per evaluation and task.", POS),
    _arg("short_share", "Share of steps drawn from shorter levels than the current one.", SHARE),
    _arg("level_patience", "Move to the next level after this many steps at a level even if the held-out "
                           "accuracy stays below --promote-at (0 = wait for it).", COUNT),
    _arg("grad_chunks", "Backpropagate through only the last N context chunks of a sample; the chunks before "
                        "them are read without gradient (truncated backpropagation: long levels at ~a third of "
                        "their cost, the memory trained on what aged states look like). 0 = through all.",
         COUNT, metavar="N"),
    _arg("tasks", f"Task mix, task:weight,... Tasks: {', '.join(TASKS)}.", metavar="MIX"),
    _arg("in_memory", "Share of passkey and recall samples whose needle is put in text read into memory, never "
                      "in the live chunk (the rest: any depth).", float),
    _arg("init_adapter", "Start from this adapter (its memory settings win; --lora-targets can add targets). "
                         "Default: a fresh, untrained memory.", click.Path(exists=True, dir_okay=False)),
    _arg("time_limit_min", "Stop within this many minutes: no step starts that would end past it, judged by the "
         "longest step so far (the steps done are saved). Default: no limit.",
         click.FloatRange(0.0, min_open=True), flag="--time-limit"),
    _arg("save_every", "Write a checkpoint every N steps (also at the end and on Ctrl-C).", POS),
    _arg("seed", "Seed of the sample draw and of a fresh adapter.", int),
    click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped."),
    click.option("--pipeline", type=POS, default=1, show_default=True,
                 help="Split each sample's chunks over this many processes (layer-level pipeline); launch with "
                      "torchrun --nproc-per-node N: N / pipeline data-parallel replicas."),
    json_option("Print one JSON object on stdout at the end: the last step's record (step, loss, exact, level, "
                "tokens_per_s, ...) with out and adapter. Every step's record is in OUT/log.jsonl."),
    QUIET,
    VERBOSE,
)


def check_data(weights: dict[str, float]) -> None:
    """The text the tasks are built from is in the data folder (`python scripts/fetch_data.py`): every task
    hides its needle in essays and plays, needle-QA also needs SQuAD, summary its summaries file
    (`python scripts/make_summaries.py`). Raises DataMissingError (a CometError naming the script) before
    any model is loaded."""
    from comet_core.tasks import documents

    families = ["essays", "plays"] + (["squad"] if weights.get("needle_qa") else [])
    for family in families:
        for split in ("train", "eval"):
            documents(family, split)
    if weights.get("summary"):
        from comet_core.tasks.summaries import load_summaries

        load_summaries("train")


@click.command("train")
@train_options
def train(quiet: bool, verbose: bool, as_json: bool, threads: int | None, **kw) -> None:
    """Teach the memory: train memory nets, beacon embeddings and LoRA on passkey, fact, needle-QA,
    multi-needle, variable-tracking, verbatim-recall and language-modelling samples built from real text
    in data/ (run `python scripts/fetch_data.py` once; $COMET_DATA points elsewhere), on service logs in
    which a job fails (incident), and on summaries the base model wrote of passages it had whole in its
    window (`python scripts/make_summaries.py` once). Safe to stop at any time: Ctrl-C, or `kill PID` for
    a run started in the background (the shell makes it ignore Ctrl-C), keeps every completed step;
    continue with --resume.

    \b
    Examples:
      comet train --out runs/smollm2 --steps 300 --time-limit 60
      comet train --out runs/smollm2 --resume --steps 600
      comet train --out runs/new --init-adapter comet_core/adapters/smollm2.safetensors --tasks passkey:1
      torchrun --nproc-per-node 4 $(which comet) train --pipeline 2 --out runs/pp   # 2 pipelines x 2 ranks
    """
    if verbose:
        from . import main

        main._debug = True  # tracebacks for internal errors, as with COMET_DEBUG=1
    pipeline = kw.pop("pipeline")
    args = TrainArgs(**{f.name: kw[f.name] for f in fields(TrainArgs) if f.name in kw})
    try:
        args.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if pipeline > 1 and args.grad_chunks:
        raise click.UsageError("--grad-chunks works with --pipeline 1 only (a pipeline backpropagates "
                               "through every chunk)")

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from comet_core.train.pipeline import PipelineError, check_launch

    check_launch(pipeline)  # how to launch comes first: it is the same fix with or without data
    args.check_out()  # a file in the way of --out, or --resume without a checkpoint there
    check_data(args.task_weights())  # before any model loads
    from comet_core.train.trainer import train as run_train

    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_procs))
    distributed = pipeline > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # under torchrun
        from functools import partial

        from comet_core.train.pipeline import train_pipeline

        run_train = partial(train_pipeline, pp=pipeline)
        quiet = quiet or os.environ.get("RANK", "0") != "0"
    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet or not console.is_terminal)
    task = progress.add_task("train", total=args.steps, info="loading")

    def on_step(r: dict) -> None:
        info = (f"loss {r['loss']:.3f} exact {r['exact']:.2f} level {r['level']} ({r['level_acc']:.2f}) "
                f"{r['tokens_per_s']:.0f} tok/s")
        progress.update(task, completed=r["step"], info=info)
        line = f"step {r['step']}/{args.steps} {info} {r['elapsed']:.0f}s"
        if quiet:
            return
        if not console.is_terminal:
            print(line, file=sys.stderr, flush=True)
        elif verbose:
            progress.console.print(line, highlight=False)  # above the bar

    def stop(signum, frame):  # `kill`, `timeout`, a service manager: stop as Ctrl-C does
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, stop)
    try:
        with progress:
            last = run_train(args, on_step)
    except PipelineError as e:  # a peer died or timed out: exit now, without waiting on it at shutdown
        click.echo(f"comet: error: {e}", err=True)
        sys.stderr.flush()
        os._exit(1)
    except KeyboardInterrupt:
        kept = (f"steps since the last checkpoint (every {args.save_every}) are lost" if distributed
                else "every completed step is saved")
        click.echo(f"comet: interrupted ({kept}): continue with `comet train --out {args.out} --resume`", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if os.environ.get("RANK", "0") != "0":
        return
    adapter = os.path.join(args.out, "adapter.safetensors")
    if as_json:
        saved = adapter if os.path.isfile(adapter) else None  # none when a new run stopped before its first step
        click.echo(json.dumps({"out": args.out, "adapter": saved, **last, "args": asdict(args)}))
    if not quiet:
        click.echo(f"comet: {done_message(last, args.steps, adapter)}", err=True)


def done_message(last: dict, steps: int, adapter: str) -> str:
    """What the run did: saved after step N, or nothing (no "loss": no step ran)."""
    step = last["step"]
    if "loss" in last:
        return f"saved {adapter} after step {step}"
    if step >= steps:
        return f"nothing to do: already at step {step} (raise --steps to train further)"
    return f"the time limit ran out before a step: still at step {step} (nothing new saved)"


if __name__ == "__main__":  # `torchrun ... -m comet_cli.train_cmd ...`: the same command, errors and exit codes
    from .main import cli

    cli.main(["train", *sys.argv[1:]], prog_name="comet")
