"""Teach the memory: train CoMeT memory nets, beacon embeddings and LoRA on a frozen backbone.

One step = `accum` samples, each read with full backprop through the recurrence (gradient checkpointing
per (chunk, layer) cell keeps activation memory at one layer input per cell). Loss: cross-entropy on
the answer tokens (and the end-of-turn token after them, so answers learn to stop), averaged per token.

Curriculum: samples have `level` context chunks (2 -> 4 -> 8 -> 16), promoted when the teacher-forced
exact match (every answer token right) over the last `window` samples of the key-retrieval tasks
(`GATED`: short answers that can be exactly right) reaches `promote_at`; a share of samples is drawn
from shorter levels so short inputs are never forgotten. (Counting lm continuations or SQuAD answers,
which are almost never exact, capped the rate below `promote_at`: the curriculum could never advance.)

Checkpoints (safetensors only, no pickle): out/adapter.safetensors, out/train_state.safetensors (AdamW
moments + JSON metadata: step, level, rng, recent results), out/log.jsonl (one line per step).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..adapter import load_adapter, save_adapter
from ..config import CometConfig
from ..lora import TARGETS as LORA_TARGETS
from ..memory import MemoryState
from ..model import CometModel
from ..prompt import end_of_turn_id, question_ids
from ..state_io import atomic_write
from .data import TASKS, make_sample

GATED = ("passkey", "multi_needle", "vartrack")  # tasks whose exact match decides promotion
IN_MEMORY_TASKS = ("passkey", "recall")  # tasks whose needle `in_memory` can keep out of the live chunk


@dataclass
class TrainArgs:
    out: str = "runs/train"
    model: str | None = None
    precision: str = "bf16"
    chunk_size: int = 512
    stride: int = 8
    n_global: int = 16
    budget: int = 64
    lora_rank: int = 8
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # any of these
    init_adapter: str | None = None  # continue from an adapter (its settings win; lora_targets may add)
    steps: int = 300
    accum: int = 4  # samples per optimizer step
    lr: float = 1e-3  # memory nets and beacon embeddings
    lora_lr: float = 5e-4  # LoRA on the backbone
    warmup: int = 10
    clip: float = 1.0
    min_chunks: int = 2
    max_chunks: int = 16
    promote_at: float = 0.8
    window: int = 24
    level_patience: int = 0  # promote after this many steps at a level even below promote_at (0: never)
    short_share: float = 0.3  # share of samples drawn from shorter levels
    tasks: str = "passkey:0.35,recall:0.3,multi_needle:0.1,needle_qa:0.05,vartrack:0.05,lm:0.15"
    random_plan: float = 0.2  # share of samples with random chunk sizes instead of full chunks
    in_memory: float = 0.8  # share of passkey/recall samples whose needle lies in text read into memory
    seed: int = 0
    save_every: int = 10
    time_limit_min: float | None = None
    grad_ckpt: bool = True
    ckpt_above: int = 4  # checkpoint only samples with more context chunks than this
    resume: bool = False

    def config(self) -> CometConfig:
        return CometConfig(chunk_size=self.chunk_size, stride=self.stride, n_global=self.n_global,
                           budget=self.budget, lora_rank=self.lora_rank,
                           lora_targets=tuple(self.lora_targets.split(",")))

    def check(self) -> None:
        """Raise ValueError on an unknown task or LoRA target (before any model is loaded)."""
        self.task_weights()
        if not 0.0 <= self.in_memory <= 1.0:
            raise ValueError(f"--in-memory is a share in [0, 1], got {self.in_memory}")
        bad = set(self.lora_targets.split(",")) - set(LORA_TARGETS)
        if bad:
            raise ValueError(f"unknown LoRA targets {sorted(bad)}; choose from {','.join(LORA_TARGETS)}")

    def task_weights(self) -> dict[str, float]:
        try:
            w = {k.strip(): float(v) for k, v in (p.split(":") for p in self.tasks.split(","))}
        except ValueError:
            raise ValueError(f"--tasks wants task:weight,... (e.g. passkey:0.5,lm:0.5), got {self.tasks!r}") from None
        bad = set(w) - set(TASKS)
        if bad:
            raise ValueError(f"unknown tasks {sorted(bad)}; choose from {','.join(TASKS)}")
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {self.tasks!r}")
        return w


@dataclass
class Encoded:
    chunks: list[list[int]]  # context chunks read into memory
    live: list[int]  # pending text + question + answer (+ end of turn)
    n_target: int  # the last n_target tokens of `live` are predicted


def encode(sample, tok, cfg: CometConfig, rng: random.Random, random_plan: float = 0.0) -> Encoded:
    """Token ids of a sample in the layout the CLI uses: full chunks, remainder in the live chunk."""
    c = cfg.chunk_size
    ctx = tok.encode(sample.context, add_special_tokens=False)
    if rng.random() < random_plan:  # random chunk sizes in [c/4, c]; the remainder goes live
        sizes, left = [], len(ctx)
        while left >= c // 4:
            n = min(left, rng.randint(c // 4, c))
            sizes.append(n)
            left -= n
    else:
        sizes = [c] * (len(ctx) // c)
    chunks, i = [], 0
    for n in sizes:
        chunks.append(ctx[i:i + n])
        i += n
    target = tok.encode(sample.answer, add_special_tokens=False)
    if sample.question:
        target.append(end_of_turn_id(tok))
    q = question_ids(tok, sample.question)
    if not q and i == len(ctx) and chunks:  # "continue the text" needs a token to predict from
        i -= 1
        chunks[-1] = chunks[-1][:-1]
    live = ctx[i:] + q + target
    return Encoded(chunks, live, len(target))


def sample_loss(model: CometModel, enc: Encoded, grad_ckpt: bool = True) -> tuple[torch.Tensor, bool]:
    """Summed answer-token cross-entropy and whether every answer token is the argmax (teacher forced)."""
    dev = model.device
    st = MemoryState.empty(model.n_layers)
    if enc.chunks:
        st, _ = model.read(st, [torch.tensor([c], device=dev) for c in enc.chunks], grad_ckpt=grad_ckpt)
    hid = model.live(st, torch.tensor([enc.live], device=dev), grad_ckpt=grad_ckpt)  # [1, p, d]
    p, n = len(enc.live), enc.n_target
    logits = model.logits(hid[0, p - n - 1:p - 1])  # [n, V]
    targets = torch.tensor(enc.live[p - n:], device=dev)
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, bool((logits.argmax(-1) == targets).all())


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
        if (len(self.recent) == self.window and sum(self.recent) / self.window >= self.promote_at
                and self.level < self.max_level):
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
                      patience=args.level_patience)


def draw(args: TrainArgs, cur: Curriculum, rng: random.Random, weights: dict[str, float], tok,
         cfg: CometConfig) -> tuple[int, str, Encoded]:
    """One training sample: (level, task, encoded); a share comes from shorter levels than the current.

    A needle at a uniform depth lands in the live chunk (where plain attention finds it) a quarter of the
    time at level 2; `in_memory` of the passkey and recall samples keep it (and for recall the whole
    answer) in the text read into memory, so they can only be answered by reading the memory."""
    level = cur.level
    if level > args.min_chunks and rng.random() < args.short_share:
        level = rng.choice([lv for lv in (2, 4, 8, 16, 32) if args.min_chunks <= lv < cur.level])
    task = rng.choices(list(weights), list(weights.values()))[0]
    n_ctx = rng.randint((level - 1) * cfg.chunk_size + cfg.chunk_size // 4, level * cfg.chunk_size)
    if task not in IN_MEMORY_TASKS or rng.random() >= args.in_memory:
        return level, task, encode(make_sample(task, tok, n_ctx, rng, "train"), tok, cfg, rng, args.random_plan)
    depth = rng.random() * (n_ctx // cfg.chunk_size * cfg.chunk_size) / n_ctx  # within the full chunks
    for _ in range(8):
        sample = make_sample(task, tok, n_ctx, rng, "train", depth=depth)
        enc = encode(sample, tok, cfg, rng, args.random_plan)
        needle = len(tok.encode(sample.context[:sample.meta["needle_end"]], add_special_tokens=False))
        if needle <= sum(map(len, enc.chunks)):  # every needle token is read into memory
            break
        depth /= 2  # an intro, the needle's length or a random plan pushed it live: move it up
    return level, task, enc  # (after 8 tries, at a depth near 0, the last sample is kept as it is)


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


def _save_train_state(path: Path, opt: torch.optim.AdamW, model: CometModel, meta: dict) -> None:
    names = {id(p): k for k, p in model.mem.trainable().items()}
    tensors = {}
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
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["comet_train"])
    tensors = st_load(data)
    for k, p in model.mem.trainable().items():
        if f"{k}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(meta["adam_steps"][k]), "exp_avg": tensors[f"{k}.exp_avg"],
                            "exp_avg_sq": tensors[f"{k}.exp_avg_sq"]}
    return meta


def resume_progress(args: TrainArgs, out: Path, opt: torch.optim.AdamW, model: CometModel, cur: Curriculum,
                    rng: random.Random) -> tuple[int, int, float]:
    """With --resume and a checkpoint in `out`: restore optimizer, curriculum and rng in place and return
    (step, seen_tokens, elapsed seconds); otherwise (0, 0, 0.0)."""
    if not (args.resume and (out / "train_state.safetensors").exists()):
        return 0, 0, 0.0
    meta = _load_train_state(out / "train_state.safetensors", opt, model)
    cur.level, cur.recent = meta["level"], deque(meta["recent"])
    cur.steps_at_level = meta.get("steps_at_level", 0)
    rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in meta["rng"]))
    return meta["step"], meta["seen_tokens"], meta.get("elapsed", 0.0)


def build_model(args: TrainArgs):
    """Load the backbone (frozen) and a fresh or given adapter."""
    from ..loading import load_model, model_fingerprint

    loaded = load_model(args.model, precision=args.precision, trainable=True)
    out = Path(args.out)
    if args.resume and (out / "adapter.safetensors").exists():
        model, _ = load_adapter(out / "adapter.safetensors", loaded.model, model_fingerprint(loaded.model))
    elif args.init_adapter:
        model, _ = load_adapter(args.init_adapter, loaded.model, model_fingerprint(loaded.model),
                                add_lora_targets=args.config().lora_targets)
    else:
        model = CometModel.create(loaded.model, args.config(), seed=args.seed)
    return loaded, model, model_fingerprint(loaded.model)


def train(args: TrainArgs, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run training; returns the last step's record. Safe to stop at any time: rerun with resume=True."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, model, base_fp = build_model(args)
    tok, cfg = loaded.tokenizer, model.cfg
    opt = _optimizer(model, args)
    weights = args.task_weights()
    cur = curriculum(args, weights)
    rng = random.Random(args.seed)
    step, seen_tokens, elapsed0 = resume_progress(args, out, opt, model, cur, rng)
    t0, record = time.time(), {}
    stepping = False  # True while the weights are between two completed steps
    try:
        while step < args.steps:
            if args.time_limit_min and time.time() - t0 > 60 * args.time_limit_min:
                break
            ts = time.time()
            mult = lr_at(step, args)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
            opt.zero_grad(set_to_none=True)
            loss_sum, n_tok, exact_n, text_tok = 0.0, 0, 0, 0
            per_task: dict[str, list[float]] = {}  # task -> [answer loss per token, exact] of each sample
            for _ in range(args.accum):
                level, task, enc = draw(args, cur, rng, weights, tok, cfg)
                # per-cell checkpointing trades ~30% more compute for flat memory: only worth it on long samples
                loss, exact = sample_loss(model, enc, args.grad_ckpt and len(enc.chunks) > args.ckpt_above)
                (loss / (enc.n_target * args.accum)).backward()
                value = loss.item()
                loss_sum += value
                n_tok += enc.n_target
                exact_n += exact
                text_tok += sum(map(len, enc.chunks)) + len(enc.live)
                per_task.setdefault(task, []).append([round(value / enc.n_target, 4), int(exact)])
                cur.record(level, exact, task)
            params = list(model.mem.trainable().values())
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, args.clip))
            stepping = True
            opt.step()
            cur.end_step()
            step += 1
            seen_tokens += text_tok
            stepping = False
            dt = time.time() - ts
            record = {"step": step, "loss": loss_sum / max(1, n_tok), "exact": exact_n / args.accum,
                      "level": cur.level, "level_acc": cur.accuracy(), "grad_norm": gnorm, "lr_mult": mult,
                      "tokens_per_s": text_tok / dt, "seen_tokens": seen_tokens, "step_s": dt,
                      "elapsed": elapsed0 + time.time() - t0, "tasks": per_task}
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if on_step:
                on_step(record)
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(out, model, opt, base_fp, loaded.name, args, step, seen_tokens, cur, rng,
                                elapsed0 + time.time() - t0)
    except KeyboardInterrupt:  # Ctrl-C: keep every completed step (not one cut inside opt.step())
        if not stepping:
            save_checkpoint(out, model, opt, base_fp, loaded.name, args, step, seen_tokens, cur, rng,
                            elapsed0 + time.time() - t0)
        raise
    save_checkpoint(out, model, opt, base_fp, loaded.name, args, step, seen_tokens, cur, rng,
                    elapsed0 + time.time() - t0)
    return record


def save_checkpoint(out: Path, model, opt, base_fp, base_name, args, step, seen_tokens, cur, rng,
                    elapsed: float) -> None:
    notes = {"trained_steps": step, "seen_tokens": seen_tokens, "level": cur.level,
             "train_seconds": round(elapsed), "train_args": asdict(args)}
    save_adapter(out / "adapter.safetensors", model, base_fp, base_name, notes=notes)
    meta = {"step": step, "seen_tokens": seen_tokens, "level": cur.level, "recent": list(cur.recent),
            "steps_at_level": cur.steps_at_level,
            "rng": rng.getstate(), "args": asdict(args), "elapsed": elapsed}
    _save_train_state(out / "train_state.safetensors", opt, model, meta)
