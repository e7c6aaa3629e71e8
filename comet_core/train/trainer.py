"""Teach the memory: train CoMeT memory nets, beacon embeddings and LoRA on a frozen backbone.

One step = `accum` samples in the answer layout (samples.py), read as one batch with full backprop through
the recurrence (gradient checkpointing per (chunk, layer) cell for long samples keeps activation memory at
one layer input per cell). Loss: cross-entropy on the answer tokens (and the end-of-turn token after
them, so answers learn to stop), averaged per token.

Curriculum: samples have `level` context chunks (1 -> 2 -> 4 -> ... -> max_chunks), promoted when the
held-out accuracy of *generated* answers (every `eval_every` steps, eval-split samples of the current
level, key-retrieval tasks `GATED`) reaches `promote_at`; with eval_every = 0, when the teacher-forced
exact match over the last `window` training samples of those tasks does. A share of steps is drawn from
shorter levels so short inputs are never forgotten. (Counting lm continuations or SQuAD answers, which
are almost never exact, would cap the rate below `promote_at`: the curriculum could never advance.)

One loop for one process and for pp x dp processes (pipeline.py): single-process training is the
distributed loop with one rank.

Checkpoints (safetensors only, no pickle): out/adapter.safetensors, out/train_state.safetensors (AdamW
moments + JSON metadata: step, level, rng, recent results), out/log.jsonl (one line per step),
out/eval.jsonl (one line per held-out evaluation, step 0 included).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..adapter import save_adapter
from ..config import CometConfig
from ..engine import load
from ..loading import pick_device
from ..memory import MemoryState
from ..model import CometModel
from ..state_io import atomic_write
from .args import TrainArgs
from .pipeline import Mesh, all_reduce, init_mesh, pipeline_step, sync_grads
from .prefetch import Prefetch
from .samples import Draw, Encoded, draw_batch, encode  # noqa: F401 (encode: part of this module's API)

GATED = ("passkey", "fact", "multi_needle", "vartrack")  # short exact answers: they decide promotion


def batch_loss(model: CometModel, encs: list[Encoded], grad_ckpt: bool = True, grad_chunks: int = 0,
               end_weight: float = 1.0) -> tuple[torch.Tensor, list[bool]]:
    """Answer-token cross-entropy summed per sample ([B]) and whether every answer token of each sample
    is the argmax (teacher forced). end_weight: the weight of each answer's last two targets in that sum
    (`Encoded.weights`; 1 = a plain sum). The samples share one chunk plan and run as one batch; live chunks of
    different lengths are padded at the end (causal attention: pads never reach the real tokens).
    grad_chunks > 0: only the last grad_chunks context chunks carry gradient (the earlier ones are read
    under no_grad, their memory state a constant): truncated backpropagation through the chunks."""
    dev = model.device
    plan = [len(c) for c in encs[0].chunks]
    if any([len(c) for c in e.chunks] != plan for e in encs):
        raise ValueError("the samples of a batch need the same chunk plan")
    st = MemoryState.empty(model.n_layers)
    if plan:
        chunks = [torch.tensor([e.chunks[i] for e in encs], device=dev) for i in range(len(plan))]
        cut = max(0, len(chunks) - grad_chunks) if grad_chunks else 0
        if cut:
            with torch.no_grad():
                st, _ = model.read(st, chunks[:cut])
        st, _ = model.read(st, chunks[cut:], grad_ckpt=grad_ckpt)
    p_max = max(len(e.live) for e in encs)
    live = torch.tensor([e.live + e.live[-1:] * (p_max - len(e.live)) for e in encs], device=dev)
    hid = model.live(st, live, grad_ckpt=grad_ckpt)  # [B, p_max, d]
    pos = [e.targets() for e in encs]
    rows = torch.tensor([i - 1 for p in pos for i in p], device=dev)
    owner = torch.tensor([b for b, p in enumerate(pos) for _ in p], device=dev)
    logits = model.logits(hid[owner, rows])  # [targets of all samples, V]
    targets = torch.tensor([e.live[i] for e, p in zip(encs, pos, strict=True) for i in p], device=dev)
    ce = F.cross_entropy(logits, targets, reduction="none")
    if end_weight != 1.0:
        ce = ce * torch.tensor([w for e in encs for w in e.weights(end_weight)], device=dev, dtype=ce.dtype)
    loss = torch.zeros(len(encs), device=dev, dtype=ce.dtype).index_add(0, owner, ce)
    hits = torch.zeros(len(encs), device=dev).index_add(0, owner, (logits.argmax(-1) == targets).float())
    return loss, [int(h) == len(p) for h, p in zip(hits.tolist(), pos, strict=True)]


def sample_loss(model: CometModel, enc: Encoded, grad_ckpt: bool = True) -> tuple[torch.Tensor, bool]:
    """Summed answer-token cross-entropy of one sample and whether it is exact (teacher forced)."""
    loss, exact = batch_loss(model, [enc], grad_ckpt)
    return loss[0], exact[0]


@dataclass
class Curriculum:
    level: int
    max_level: int
    promote_at: float
    window: int
    recent: deque = field(default_factory=deque)
    tasks: tuple[str, ...] | None = None  # only these tasks' results count (None: all)
    patience: int = 0  # promote after this many steps at a level whatever the rate (0: never)
    steps_at_level: int = 0
    on_eval: bool = False  # promotion is decided by held-out evaluations (gate), not by training results

    def _promote(self) -> None:
        self.level = min(self.level * 2, self.max_level)
        self.recent.clear()
        self.steps_at_level = 0

    def record(self, level: int, exact: bool, task: str | None = None) -> bool:
        """Record a result of `task` at `level`; returns True when the level was promoted."""
        if level != self.level or (self.tasks is not None and task not in self.tasks):
            return False
        self.recent.append(exact)
        while len(self.recent) > self.window:
            self.recent.popleft()
        if (not self.on_eval and len(self.recent) == self.window
                and sum(self.recent) / self.window >= self.promote_at and self.level < self.max_level):
            self._promote()
            return True
        return False

    def gate(self, heldout_acc: float) -> bool:
        """A held-out accuracy at this level; returns True when it promoted (on_eval curricula only)."""
        if self.on_eval and heldout_acc >= self.promote_at and self.level < self.max_level:
            self._promote()
            return True
        return False

    def end_step(self) -> bool:
        """Count an optimizer step at this level; returns True when patience ran out and it promoted."""
        self.steps_at_level += 1
        if self.patience and self.steps_at_level >= self.patience and self.level < self.max_level:
            self._promote()
            return True
        return False

    def accuracy(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0


def curriculum(args: TrainArgs, weights: dict[str, float]) -> Curriculum:
    gated = tuple(t for t in GATED if weights.get(t)) or None
    return Curriculum(args.min_chunks, args.max_chunks, args.promote_at, args.window, tasks=gated,
                      patience=args.level_patience, on_eval=args.eval_every > 0)


def pick_level(args: TrainArgs, cur: Curriculum, rng: random.Random) -> int:
    """The current level, or (share `short_share`) a shorter one, so short inputs are never forgotten."""
    shorter = [lv for lv in levels(args) if lv < cur.level]
    if shorter and rng.random() < args.short_share:
        return rng.choice(shorter)
    return cur.level


def out_of_time(elapsed_s: float, longest_step_s: float, limit_min: float | None) -> bool:
    """True when another step, as long as the longest so far, would end past the limit (None: no limit)."""
    return bool(limit_min) and elapsed_s + longest_step_s > 60 * limit_min


def levels(args: TrainArgs) -> list[int]:
    """Curriculum levels: min_chunks, doubling up to max_chunks (which is always the last)."""
    out, lv = [], args.min_chunks
    while lv < args.max_chunks:
        out.append(lv)
        lv *= 2
    return out + [args.max_chunks]


def draw(args: TrainArgs, cur: Curriculum, rng: random.Random, weights: dict[str, float], tok,
         cfg: CometConfig, n: int) -> list[Draw]:
    """One step's samples: a level, then n samples of it sharing one chunk plan (samples.draw_batch)."""
    return draw_batch(tok, cfg, rng, pick_level(args, cur, rng), weights, n, args.priming, args.in_memory,
                      args.random_plan)


def lr_at(step: int, args: TrainArgs) -> float:
    """Multiplier: linear warm-up, then cosine to 10%."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _optimizer(model: CometModel, args: TrainArgs) -> torch.optim.AdamW:
    params = model.mem.trainable()
    lora = [p for k, p in params.items() if k.startswith("lora.")]
    rest = [p for k, p in params.items() if not k.startswith("lora.")]
    for p in params.values():
        p.requires_grad_(True)
    groups = [{"params": rest, "lr": args.lr, "base_lr": args.lr}]
    if lora:
        groups.append({"params": lora, "lr": args.lora_lr, "base_lr": args.lora_lr})
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=0.0)


@contextmanager
def averaged(params: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> Iterator[None]:
    """The EMA weights in place of the raw ones for the duration (evaluation, saving the adapter)."""
    if not ema:
        yield
        return
    raw = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(ema[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(raw[k])


def _save_train_state(path: Path, opt: torch.optim.AdamW, model: CometModel, meta: dict,
                      raw: dict[str, torch.Tensor] | None = None) -> None:
    """Adam moments (and, when the adapter holds averaged weights, the raw ones as `{name}.raw`)."""
    names = {id(p): k for k, p in model.mem.trainable().items()}
    tensors = {f"{k}.raw": v.detach().contiguous() for k, v in (raw or {}).items()}
    for group in opt.param_groups:
        for p in group["params"]:
            s = opt.state.get(p)
            if s:
                k = names[id(p)]
                tensors[f"{k}.exp_avg"] = s["exp_avg"].contiguous()
                tensors[f"{k}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
                meta.setdefault("adam_steps", {})[k] = float(s["step"])
    atomic_write(path, st_save(tensors, metadata={"comet_train": json.dumps(meta)}))


def _load_train_state(path: Path, opt: torch.optim.AdamW, model: CometModel) -> dict:
    """Restore the Adam moments; where the checkpoint kept raw weights beside an averaged adapter, training
    resumes from the raw ones (the average, loaded with the adapter, was already copied by the caller)."""
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["comet_train"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    for k, p in model.mem.trainable().items():
        if f"{k}.raw" in tensors:
            with torch.no_grad():
                p.copy_(tensors[f"{k}.raw"])
        if f"{k}.exp_avg" in tensors:  # the moments go where the weight is (a run may move to a GPU)
            opt.state[p] = {"step": torch.tensor(meta["adam_steps"][k]),
                            "exp_avg": tensors[f"{k}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"{k}.exp_avg_sq"].to(p.device)}
    return meta


def resume_progress(args: TrainArgs, out: Path, opt: torch.optim.AdamW, model: CometModel, cur: Curriculum,
                    rng: random.Random) -> tuple[int, int, float]:
    """With --resume and a checkpoint in `out`: restore optimizer, curriculum, rng and raw weights in place
    and return (step, seen_tokens, elapsed seconds); otherwise (0, 0, 0.0)."""
    if not (args.resume and (out / "train_state.safetensors").exists()):
        return 0, 0, 0.0
    meta = _load_train_state(out / "train_state.safetensors", opt, model)
    cur.level, cur.recent = meta["level"], deque(meta["recent"])
    cur.steps_at_level = meta.get("steps_at_level", 0)
    if cur.level > cur.max_level:  # resumed with a lower --max-chunks: go back to that level
        cur.level, cur.recent, cur.steps_at_level = cur.max_level, deque(), 0
    rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in meta["rng"]))
    return meta["step"], meta["seen_tokens"], meta.get("elapsed", 0.0)


def build_model(args: TrainArgs, device: torch.device | None = None):
    """Load the backbone (frozen) and a resumed, given or fresh adapter (engine.load; --lora-targets it lacks
    are added at zero); the run's --priming wins (it is how the adapter will be asked, not a weight).
    Returns (engine, fingerprint of the base)."""
    out = Path(args.out)
    if args.resume and (out / "adapter.safetensors").exists():
        adapter = out / "adapter.safetensors"
    else:
        adapter = args.init_adapter
    extra = args.added_targets() if adapter else ()  # new targets start at zero, their Adam state fresh
    engine = load(args.model, args.precision, adapter, device=None if device is None else str(device),
                  threads=torch.get_num_threads(), trainable=True, config=args.config(), seed=args.seed,
                  add_lora_targets=extra)
    model = engine.model
    model.cfg = model.mem.cfg = replace(model.cfg, priming=args.priming)
    return engine, engine.base_fingerprint


def heldout(engine, args: TrainArgs, weights: dict[str, float], level: int) -> dict:
    """Generated answers on eval-split samples of `level` chunks, for each gated task in the mix (the same
    samples every time: a seeded rng per task and length). Returns {task: accuracy, "acc": their mean}."""
    from ..evaluate import heldout_accuracy

    tasks = [t for t in GATED if weights.get(t)] or [t for t in weights if weights[t]]
    n_tokens = level * engine.model.cfg.chunk_size
    res = {t: heldout_accuracy(engine, t, n_tokens, args.eval_samples)[0] for t in tasks}
    return dict(res, acc=sum(res.values()) / len(res), level=level, tokens=n_tokens)


def train(args: TrainArgs, on_step: Callable[[dict], None] | None = None, pp: int = 1,
          timeout_s: float = 600.0) -> dict:
    """The training loop, for one process or pp x dp processes under torchrun (pipeline.py): every rank
    draws the same samples from the same rng (one step = accum x dp samples, sample k on replica k % dp),
    so the curriculum and rng stay identical everywhere. With pp = 1 a replica runs its samples as one
    batch; with pp > 1 each sample is swept through the pipeline. Rank 0 alone logs, evaluates, calls
    `on_step` and writes checkpoints (every `save_every` steps and at the end; a single process also on
    Ctrl-C, keeping every completed step). Safe to stop at any time: rerun with resume=True. Returns the
    last step's record; when no step ran (`steps` already reached, or the time limit hit first), the run's
    progress as it stands: {"step", "seen_tokens", "level", "elapsed"}, no "loss". Raises RunFolderError
    before loading anything when `out` is a file or resume=True finds no checkpoint there."""
    args.check_out()
    distributed = pp > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    own_group = distributed and not dist.is_initialized()
    mesh = init_mesh(pp, timeout_s) if distributed else Mesh(device=pick_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine, base_fp = build_model(args, mesh.device)
    model, tok, cfg, loaded = engine.model, engine.tok, engine.model.cfg, engine.loaded
    opt = _optimizer(model, args)
    named = model.mem.trainable()
    params = list(named.values())
    # the weight average starts from the loaded weights (a resumed run's adapter is its average)
    ema = {k: p.detach().clone() for k, p in named.items()} if args.ema else {}
    weights = args.task_weights()
    cur = curriculum(args, weights)
    rng = random.Random(args.seed)
    step, seen_tokens, elapsed0 = resume_progress(args, out, opt, model, cur, rng)
    t0, saved_at = time.time(), step
    record = {"step": step, "seen_tokens": seen_tokens, "level": cur.level, "elapsed": elapsed0}  # until a step

    def save() -> None:
        nonlocal saved_at
        if mesh.rank == 0:
            raw = {k: p.detach().clone() for k, p in named.items()} if ema else None
            with averaged(named, ema):
                save_checkpoint(out, model, opt, base_fp, loaded.name, args, step, seen_tokens, cur, rng,
                                elapsed0 + time.time() - t0, raw)
        saved_at = step

    def evaluate_now() -> dict | None:
        """Held-out generated accuracy at the current level (rank 0 computes it, every rank learns it),
        appended to out/eval.jsonl."""
        acc = torch.zeros(1, dtype=torch.float64, device=mesh.device)
        ev = None
        if mesh.rank == 0:
            te = time.time()
            with averaged(named, ema):
                ev = heldout(engine, args, weights, cur.level)
            acc[0] = ev["acc"]
        if mesh.world > 1:
            all_reduce(acc, "held-out accuracy")
        if cur.gate(float(acc[0])) and mesh.rank == 0:
            ev["promoted_to"] = cur.level
        if mesh.rank == 0:
            ev.update(seconds=round(time.time() - te, 1))
            line = {"step": step, "seen_tokens": seen_tokens, "elapsed": elapsed0 + time.time() - t0, **ev}
            with open(out / "eval.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        return ev

    stepping = False  # True while the weights are between two completed steps
    ahead = None if not args.workers else Prefetch(args.workers, tok, cfg, weights, args.accum * mesh.dp,
                                                   args.priming, args.in_memory, args.random_plan)
    longest = 0.0  # seconds of the longest step so far: the time limit stops before a step could overrun it
    try:
        if args.eval_every and step == 0:
            evaluate_now()  # the curve's starting point
        while step < args.steps:
            stop = torch.zeros(1, device=mesh.device)
            if mesh.rank == 0 and out_of_time(time.time() - t0, longest, args.time_limit_min):
                stop[0] = 1
            if mesh.world > 1:
                all_reduce(stop, "stop flag")
            if stop[0]:
                break
            ts = time.time()
            mult = lr_at(step, args)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
            opt.zero_grad(set_to_none=True)
            if ahead is None:
                batch = draw(args, cur, rng, weights, tok, cfg, args.accum * mesh.dp)
            else:
                batch = ahead.next(lambda: (pick_level(args, cur, rng), rng.getrandbits(63)))
            mine = [k for k in range(len(batch)) if k % mesh.dp == mesh.d]
            # stats: loss sum, answer tokens, text tokens, then per sample: loss, exact
            stats = torch.zeros(3 + 2 * len(batch), dtype=torch.float64, device=mesh.device)
            busy = wall = 0.0
            n_grad = len(batch[0].enc.chunks) if not args.grad_chunks else min(args.grad_chunks,
                                                                                  len(batch[0].enc.chunks))
            ckpt = args.grad_ckpt and n_grad > args.ckpt_above
            if mesh.pp == 1:
                encs = [batch[k].enc for k in mine]
                loss, exact = batch_loss(model, encs, ckpt, args.grad_chunks, args.end_weight)
                values = loss.detach().tolist()
                scale = torch.tensor([1.0 / (e.n_predicted * args.accum) for e in encs], device=loss.device)
                (loss * scale).sum().backward()
                for j, k in enumerate(mine):
                    stats[3 + 2 * k], stats[4 + 2 * k] = values[j], float(exact[j])
            else:
                for k in mine:
                    enc = batch[k].enc
                    r = pipeline_step(model, enc, mesh, 1.0 / (enc.n_predicted * args.accum), ckpt, args.end_weight)
                    busy, wall = busy + r.wall - r.waited, wall + r.wall
                    if r.loss is not None:
                        stats[3 + 2 * k], stats[4 + 2 * k] = r.loss, float(r.exact)
            for k in mine:
                if mesh.pp == 1 or stats[3 + 2 * k]:
                    stats[0] += stats[3 + 2 * k]
                    stats[1] += batch[k].enc.n_predicted
                    stats[2] += batch[k].text_tokens
            if mesh.world > 1:
                all_reduce(stats, "step statistics")
            sync_grads(params, mesh)
            per_task: dict[str, list] = {}  # task -> [answer loss per token, exact] of each sample
            for k, d in enumerate(batch):
                value, ok = float(stats[3 + 2 * k]), bool(stats[4 + 2 * k] > 0)
                per_task.setdefault(d.task, []).append([round(value / d.enc.n_predicted, 4), int(ok)])
                cur.record(d.level, ok, d.task)
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, args.clip))
            stepping = True
            opt.step()
            if ema:
                with torch.no_grad():
                    for k, p in named.items():
                        ema[k].lerp_(p.detach(), 1.0 - args.ema)
            step += 1
            seen_tokens += int(stats[2])
            stepping = False
            dt = time.time() - ts
            longest = max(longest, dt)
            level = cur.level
            cur.end_step()
            record = {"step": step, "loss": float(stats[0] / max(1.0, float(stats[1]))),
                      "exact": float(stats[4::2].mean()), "level": level, "level_acc": cur.accuracy(),
                      "grad_norm": gnorm, "lr_mult": mult, "tokens_per_s": float(stats[2]) / dt,
                      "seen_tokens": seen_tokens, "step_s": dt, "elapsed": elapsed0 + time.time() - t0,
                      "drawn": batch[0].level, "tasks": per_task}  # drawn: the level of this step's samples
            if distributed:
                record.update(pipeline=pp, data_parallel=mesh.dp, rank0_busy=busy / wall if wall else 0.0)
            if args.eval_every and step % args.eval_every == 0:
                record["eval"] = evaluate_now()
            if mesh.rank == 0:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if on_step:
                    on_step(record)
            if step % args.save_every == 0:
                save()
    except KeyboardInterrupt:  # Ctrl-C: one process keeps every completed step (not one cut inside opt.step())
        if not distributed and not stepping and saved_at != step:
            save()
        raise
    finally:
        if ahead is not None:
            ahead.close()
    if saved_at != step:
        save()
    if mesh.world > 1:
        dist.barrier()  # the checkpoint is complete before any rank moves on (or resumes from it)
        if own_group:
            dist.destroy_process_group()
    return record


def save_checkpoint(out: Path, model, opt, base_fp, base_name, args, step, seen_tokens, cur, rng,
                    elapsed: float, raw: dict[str, torch.Tensor] | None = None) -> None:
    notes = {"trained_steps": step, "seen_tokens": seen_tokens, "level": cur.level,
             "train_seconds": round(elapsed), "train_args": asdict(args)}
    save_adapter(out / "adapter.safetensors", model, base_fp, base_name, notes=notes)
    meta = {"step": step, "seen_tokens": seen_tokens, "level": cur.level, "recent": list(cur.recent),
            "steps_at_level": cur.steps_at_level,
            "rng": rng.getstate(), "args": asdict(args), "elapsed": elapsed}
    _save_train_state(out / "train_state.safetensors", opt, model, meta, raw)
