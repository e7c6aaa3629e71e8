"""The settings of a training run (`comet train`'s options), importable without torch.

`comet train --help` shows these defaults, so this module must stay light: torch, the model and the
LoRA module are imported only inside the methods that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import CometConfig
from ..errors import CometError
from ..tasks import TASKS

STATE_FILE = "train_state.safetensors"  # in --out: optimizer, progress (what --resume continues from)


class RunFolderError(CometError):
    """--out cannot hold the run: a file stands in its way, or --resume finds no checkpoint there."""


@dataclass
class TrainArgs:
    out: str = "runs/train"
    model: str | None = None
    precision: str = "4bit"
    device: str | None = None  # cpu or cuda[:N]; None: cuda when available (torchrun: each rank's LOCAL_RANK)
    chunk_size: int = 256
    stride: int = 8
    n_global: int = 16
    budget: int = 64
    lora_rank: int = 8
    lora_targets: str | None = None  # any of q/k/v/o_proj, gate/up/down_proj; None: CometConfig's (q, v) for a
    #                                  new adapter, the adapter's own with resume or init_adapter (listed ones it
    #                                  lacks are added)
    priming: int = 0  # text tokens kept live before the question (answer.py); 0: the question alone
    init_adapter: str | None = None  # continue from an adapter (its settings win; lora_targets may add)
    steps: int = 300
    accum: int = 4  # samples per optimizer step, run as one batch (same chunk plan)
    workers: int = 0  # processes drawing batches ahead (prefetch.py); 0: the training process draws them
    lr: float = 1e-3  # memory nets and beacon embeddings
    lora_lr: float = 1e-3  # LoRA on the backbone
    warmup: int = 10
    clip: float = 1.0
    end_weight: float = 1.0  # loss weight of an answer's last token and its end of turn (where it stops)
    ema: float = 0.0  # decay of an exponential moving average of the trained weights (0: off); evaluation
    #                   and the saved adapter use the average, training goes on from the raw weights
    min_chunks: int = 1  # curriculum levels: chunks read into memory (1, 2, 4, ... max_chunks)
    max_chunks: int = 32
    promote_at: float = 0.9
    window: int = 24
    eval_every: int = 25  # held-out generated accuracy every N steps; it gates the curriculum (0: off, then
    #                       the teacher-forced exact match over the last `window` samples does)
    eval_samples: int = 20
    level_patience: int = 0  # promote after this many steps at a level even below promote_at (0: never)
    short_share: float = 0.3  # share of steps drawn from shorter levels
    tasks: str = "passkey:1"
    random_plan: float = 0.0  # share of steps with random chunk sizes instead of full chunks
    in_memory: float = 0.8  # share of passkey/recall samples whose needle lies in text read into memory
    seed: int = 0
    save_every: int = 10
    time_limit_min: float | None = None
    grad_ckpt: bool = True
    ckpt_above: int = 4  # checkpoint only samples with more context chunks than this
    grad_chunks: int = 0  # backpropagate through only the last N context chunks (truncated BPTT); the ones
    #                       before are read without gradient. 0: through all of them
    resume: bool = False

    def config(self) -> CometConfig:
        return CometConfig(chunk_size=self.chunk_size, stride=self.stride, n_global=self.n_global,
                           budget=self.budget, lora_rank=self.lora_rank, priming=self.priming,
                           lora_targets=self.added_targets() or CometConfig.lora_targets)

    def added_targets(self) -> tuple[str, ...]:
        """The LoRA targets named by --lora-targets (none named: none to add to a loaded adapter)."""
        return tuple(self.lora_targets.split(",")) if self.lora_targets else ()

    def check(self) -> None:
        """Raise ValueError on an unknown task or LoRA target (before any model is loaded)."""
        self.task_weights()
        if not 0.0 <= self.in_memory <= 1.0:
            raise ValueError(f"--in-memory is a share in [0, 1], got {self.in_memory}")
        if self.end_weight <= 0:
            raise ValueError(f"--end-weight must be > 0, got {self.end_weight}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema is a decay in [0, 1), got {self.ema}")
        if self.priming < 0:
            raise ValueError(f"--priming is a number of tokens >= 0, got {self.priming}")
        if not 1 <= self.min_chunks <= self.max_chunks:
            raise ValueError(f"need 1 <= --min-chunks <= --max-chunks, got {self.min_chunks} and {self.max_chunks}")
        from ..lora import TARGETS as LORA_TARGETS  # (imports torch)

        bad = set(self.added_targets()) - set(LORA_TARGETS)
        if bad:
            raise ValueError(f"unknown LoRA targets {sorted(bad)}; choose from {','.join(LORA_TARGETS)}")

    def check_out(self) -> None:
        """Raise RunFolderError when --out (or a folder above it) is a file, or when --resume finds no
        checkpoint in --out (a typo would otherwise start a new run from scratch). Loads nothing."""
        out = Path(self.out)
        for p in (out, *out.parents):
            if p.exists():
                if not p.is_dir():
                    raise RunFolderError(f"--out {self.out}: {p} is a file, not a folder")
                break
        if self.resume and not (out / STATE_FILE).is_file():
            where = f"{self.out} (no such folder)" if not out.exists() else self.out
            raise RunFolderError(f"--resume: {where} has no {STATE_FILE}, nothing to resume "
                                 f"(drop --resume to start a new run there)")

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
