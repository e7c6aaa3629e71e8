"""`comet train`: fine-tune CoMeT memory onto a base model, with a live progress bar and resume."""

from __future__ import annotations

import os
import sys
from dataclasses import fields

import click
import torch

from comet_core.train.trainer import TrainArgs

_DEFAULTS = TrainArgs()


@click.command("train")
@click.option("--out", default=_DEFAULTS.out, show_default=True, help="Run folder: adapter, optimizer state, log.")
@click.option("--model", default=None, help="Base model (default: SmolLM2-135M-Instruct; or a HF folder / GGUF).")
@click.option("--precision", type=click.Choice(["4bit", "8bit", "bf16", "fp32"]), default=_DEFAULTS.precision,
              show_default=True, help="Backbone precision while training (4bit = QLoRA style).")
@click.option("--steps", type=int, default=_DEFAULTS.steps, show_default=True)
@click.option("--accum", type=int, default=_DEFAULTS.accum, show_default=True, help="Samples per step.")
@click.option("--lr", type=float, default=_DEFAULTS.lr, show_default=True, help="Memory nets + beacons.")
@click.option("--lora-lr", type=float, default=_DEFAULTS.lora_lr, show_default=True)
@click.option("--lora-rank", type=int, default=_DEFAULTS.lora_rank, show_default=True, help="0 = no LoRA.")
@click.option("--lora-targets", default=_DEFAULTS.lora_targets, show_default=True,
              help="Linears that get LoRA: q/k/v/o_proj, gate/up/down_proj. With --init-adapter, "
                   "targets the adapter lacks are added (starting at zero).")
@click.option("--chunk-size", type=int, default=_DEFAULTS.chunk_size, show_default=True)
@click.option("--stride", type=int, default=_DEFAULTS.stride, show_default=True)
@click.option("--n-global", type=int, default=_DEFAULTS.n_global, show_default=True)
@click.option("--budget", type=int, default=_DEFAULTS.budget, show_default=True)
@click.option("--priming", type=int, default=_DEFAULTS.priming, show_default=True,
              help="Text tokens kept live before the question (the answer layout); 0 = the question alone "
                   "meets the memory.")
@click.option("--min-chunks", type=int, default=_DEFAULTS.min_chunks, show_default=True,
              help="First curriculum level: context chunks read into memory.")
@click.option("--max-chunks", type=int, default=_DEFAULTS.max_chunks, show_default=True,
              help="Last curriculum level (levels double from --min-chunks).")
@click.option("--promote-at", type=float, default=_DEFAULTS.promote_at, show_default=True,
              help="Held-out accuracy that moves the curriculum to the next level.")
@click.option("--eval-every", type=int, default=_DEFAULTS.eval_every, show_default=True,
              help="Held-out generated accuracy every N steps (run/eval.jsonl); it gates the curriculum. "
                   "0 = off (then the teacher-forced exact match of training samples gates it).")
@click.option("--eval-samples", type=int, default=_DEFAULTS.eval_samples, show_default=True,
              help="Held-out samples per evaluation and task.")
@click.option("--short-share", type=float, default=_DEFAULTS.short_share, show_default=True,
              help="Share of steps drawn from shorter levels than the current one.")
@click.option("--level-patience", type=int, default=_DEFAULTS.level_patience, show_default=True,
              help="Move to the next curriculum level after this many steps at a level even if the "
                   "held-out accuracy stays below --promote-at (0 = wait for it).")
@click.option("--tasks", default=_DEFAULTS.tasks, show_default=True, help="task:weight,... mix.")
@click.option("--in-memory", type=float, default=_DEFAULTS.in_memory, show_default=True,
              help="Share of passkey and recall samples whose needle is put in text read into memory, "
                   "never in the live chunk (the rest: any depth).")
@click.option("--init-adapter", default=None,
              help="Start from this adapter (its settings win; --lora-targets can add targets).")
@click.option("--time-limit", "time_limit_min", type=float, default=None, help="Stop after this many minutes.")
@click.option("--save-every", type=int, default=_DEFAULTS.save_every, show_default=True)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--pipeline", type=int, default=1, show_default=True,
              help="Split each sample's chunks over this many processes (layer-level pipeline); launch with "
                   "torchrun --nproc-per-node N: N / pipeline data-parallel replicas.")
@click.option("--quiet", is_flag=True)
def train(quiet: bool, **kw) -> None:
    """Teach the memory: train memory nets, beacon embeddings and LoRA on passkey, needle-QA,
    multi-needle, variable-tracking, verbatim-recall and language-modelling samples built from real text in data/
    (run `python scripts/fetch_data.py` once). Safe to stop at any time; continue with --resume.

    \b
    Example:
      comet train --out runs/smollm2 --steps 300 --time-limit 60
      comet train --out runs/smollm2 --resume
      torchrun --nproc-per-node 4 $(which comet) train --pipeline 2 --out runs/pp   # 2 pipelines x 2 ranks
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from comet_core.train.pipeline import PipelineError
    from comet_core.train.trainer import train as run_train

    pipeline = kw.pop("pipeline")
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_procs))
    distributed = pipeline > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # under torchrun
        from functools import partial

        from comet_core.train.pipeline import train_pipeline

        run_train = partial(train_pipeline, pp=pipeline)
        quiet = quiet or os.environ.get("RANK", "0") != "0"
    args = TrainArgs(**{f.name: kw[f.name] for f in fields(TrainArgs) if f.name in kw})
    try:
        args.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet or not console.is_terminal)
    task = progress.add_task("train", total=args.steps, info="loading")

    def on_step(r: dict) -> None:
        info = (f"loss {r['loss']:.3f} exact {r['exact']:.2f} level {r['level']} ({r['level_acc']:.2f}) "
                f"{r['tokens_per_s']:.0f} tok/s")
        progress.update(task, completed=r["step"], info=info)
        if not quiet and not console.is_terminal:
            print(f"step {r['step']}/{args.steps} {info} {r['elapsed']:.0f}s", file=sys.stderr, flush=True)

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
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"saved {args.out}/adapter.safetensors after step {last.get('step')}", err=True)


if __name__ == "__main__":  # `torchrun ... -m comet_cli.train_cmd ...`: the same command, errors and exit codes
    from .main import cli

    cli.main(["train", *sys.argv[1:]], prog_name="comet")
