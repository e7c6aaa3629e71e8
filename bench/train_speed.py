"""Training throughput: text tokens per second of a training step (forward + backward), three ways.

- `sequential`: the step's samples one after another, each its own forward and backward (the loop before
  steps were batched), all threads;
- `batched`: the step's samples as one batch (what `comet train` does), all threads;
- `data-parallel`: two processes of one thread each (the torchrun path of `comet train`), each running
  half the samples as one batch, gradients all-reduced every step.
Same samples (passkey, drawn as training draws them), fresh adapter, the backbone at each of --precisions
(default bf16; 4bit is what `comet train` uses); warm-up steps first. --modes picks some of the three.
--grad-chunks N backpropagates through the last N context chunks only (`comet train --grad-chunks`;
several values, comma-separated, 0 = all: one row each).

    python -m bench.train_speed --levels 1,2 --steps 4       # ~6 min on 2 cores, nothing else running
    python -m bench.train_speed --precisions 4bit --levels 8,32 --modes batched --grad-chunks 0,8 --steps 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def _setup(model_name: str | None, chunk_size: int, threads: int, precision: str):
    from comet_core.config import CometConfig
    from comet_core.engine import load

    engine = load(model_name, precision, None, threads=threads, trainable=True,
                  config=CometConfig(chunk_size=chunk_size, lora_rank=8))
    params = list(engine.model.mem.trainable().values())
    for p in params:
        p.requires_grad_(True)
    return engine, params


def _batches(engine, level: int, n_batches: int, batch: int, seed: int):
    from comet_core.train.samples import draw_batch

    rng = random.Random(seed)
    return [draw_batch(engine.tok, engine.model.cfg, rng, level, {"passkey": 1.0}, batch) for _ in range(n_batches)]


def _step(engine, params, encs, sequential: bool, grad_chunks: int = 0) -> None:
    from comet_core.train.trainer import batch_loss

    for p in params:
        p.grad = None
    groups = [[e] for e in encs] if sequential else [encs]
    for g in groups:
        n_grad = min(grad_chunks, len(g[0].chunks)) if grad_chunks else len(g[0].chunks)
        loss, _ = batch_loss(engine.model, g, grad_ckpt=n_grad > 4, grad_chunks=grad_chunks)
        (loss / sum(e.n_predicted for e in encs)).sum().backward()


def measure(a: argparse.Namespace, level: int, sequential: bool, threads: int, precision: str,
            grad_chunks: int = 0) -> dict:
    engine, params = _setup(a.model, a.chunk_size, threads, precision)
    batches = _batches(engine, level, a.warmup + a.steps, a.batch, a.seed)
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        _step(engine, params, [d.enc for d in b], sequential, grad_chunks)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    tokens = sum(d.text_tokens for b in batches[a.warmup:] for d in b)
    return {"mode": "sequential" if sequential else "batched", "precision": precision, "level": level,
            "grad_chunks": grad_chunks, "threads": threads, "step_s": sum(times) / len(times),
            "tokens_per_s": tokens / sum(times)}


def _dp_worker(a: argparse.Namespace, level: int, out: str, precision: str) -> None:
    from comet_core.train.pipeline import init_mesh, sync_grads

    mesh = init_mesh(1)
    engine, params = _setup(a.model, a.chunk_size, 1, precision)
    batches = _batches(engine, level, a.warmup + a.steps, a.batch, a.seed)
    times, tokens = [], 0
    for i, b in enumerate(batches):
        mine = [d for k, d in enumerate(b) if k % mesh.dp == mesh.d]
        t0 = time.perf_counter()
        _step(engine, params, [d.enc for d in mine], sequential=False)
        sync_grads(params, mesh)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
            tokens += sum(d.text_tokens for d in b)  # the whole step's samples, done by the two processes
    if mesh.rank == 0:
        Path(out).write_text(json.dumps({"mode": "data-parallel", "precision": precision, "level": level,
                                         "threads": "2x1", "step_s": sum(times) / len(times),
                                         "tokens_per_s": tokens / sum(times)}))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--levels", default="1,2", help="chunks per sample")
    ap.add_argument("--precisions", default="bf16", help="backbone precisions, comma-separated")
    ap.add_argument("--modes", default="sequential,batched,data-parallel", help="which of the three, comma-separated")
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grad-chunks", default="0", help="backpropagate through the last N chunks only; 0 = all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default="bench/results/train_speed.json")
    a = ap.parse_args(argv)
    from comet_core.train.pipeline import spawn_local

    from .common import finish, machine, other_load

    warn = other_load()
    rows = []
    modes = a.modes.split(",")
    for precision in a.precisions.split(","):
        for level in (int(x) for x in a.levels.split(",")):
            for mode in ("sequential", "batched"):
                for gc in (int(x) for x in a.grad_chunks.split(",")) if mode in modes else ():
                    rows.append(measure(a, level, mode == "sequential", a.threads, precision, gc))
                    print(json.dumps(rows[-1]), flush=True)
            if "data-parallel" in modes:
                out = Path(a.json_out).with_suffix(".dp.tmp")
                if spawn_local(_dp_worker, 2, (a, level, str(out), precision), timeout_s=3600) != [0, 0]:
                    raise SystemExit("the data-parallel workers failed")
                rows.append(json.loads(out.read_text()))
                out.unlink()
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'precision':<9} {'level':>5}  {'mode':<14} {'grad':>4} {'threads':>7}  {'step s':>7}  "
          f"{'text tok/s':>10}")
    for r in rows:
        print(f"{r['precision']:<9} {r['level']:>5}  {r['mode']:<14} {r.get('grad_chunks', 0) or 'all':>4} "
              f"{r['threads']!s:>7}  {r['step_s']:7.2f}  {r['tokens_per_s']:10.0f}")
    finish(Path(a.json_out), "train_speed.json", {"machine": machine(), "warning": warn, "args": vars(a), "rows": rows})
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
