"""CoMeT hyperparameters: one frozen dataclass, saved with adapters and states."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PRECISIONS = ("4bit", "8bit", "bf16", "fp32")  # backbone weights: NF4, int8 weight-only, bf16, fp32 (loading.py)
FAMILIES = ("llama", "qwen2", "qwen3")  # model_type of the backbones CoMeT can wrap


@dataclass(frozen=True)
class CometConfig:
    chunk_size: int = 512  # c: text tokens per context chunk
    stride: int = 8  # s: one temp beacon after every s text tokens
    n_global: int = 16  # G: global memory slots (= global beacons per chunk)
    budget: int = 64  # B_T: temp-memory FIFO capacity per layer
    rank: int = 8  # bottleneck rank of both memory nets
    sink: bool = True  # a real token (the model's BOS/EOS) at position 0 of every chunk, before the memory
    lora_rank: int = 0  # 0 = no LoRA on the backbone
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    priming: int = 0  # N: pending text tokens kept live before the question when answering (answer.py)

    def __post_init__(self) -> None:
        if (self.chunk_size < 1 or self.stride < 1 or self.n_global < 1 or self.budget < 0 or self.rank < 1
                or self.priming < 0):
            raise ValueError(f"invalid CoMeT settings: {self}")

    def beacons(self, n_text: int) -> int:
        """Temp beacons in a context chunk of n_text tokens (one after every segment, partial included)."""
        return math.ceil(n_text / self.stride)

    def max_chunk_len(self) -> int:
        """Positions of a full context chunk with a full queue: [sink] + c + ceil(c/s) + 2G + B_T."""
        return int(self.sink) + self.chunk_size + self.beacons(self.chunk_size) + 2 * self.n_global + self.budget

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CometConfig:
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        d.setdefault("sink", False)  # adapters written before the sink existed were trained without one
        d.setdefault("priming", d.get("chunk_size", cls.chunk_size))  # ... and before priming: the tail stayed live
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CoMeT settings: {sorted(unknown)}")
        return cls(**d)

    def settings(self) -> dict:
        """The settings a memory state depends on (a state is only valid under the same ones)."""
        return {"chunk_size": self.chunk_size, "stride": self.stride, "n_global": self.n_global,
                "budget": self.budget}
