"""CoMeT adapters: the memory nets, beacon embeddings and LoRA of one backbone, in one safetensors file.

Metadata entry "comet_adapter" (JSON): format version, CometConfig, the base model's name and
fingerprint (an adapter only loads onto the backbone it was trained on), and free-form training notes.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .config import CometConfig
from .errors import CometError, one_line
from .memory import CometMemory
from .model import CometModel
from .state_io import atomic_write

ADAPTER_FORMAT = "comet-adapter"
ADAPTER_VERSION = 1


class AdapterError(CometError):
    """An adapter that cannot be used; one line for the user."""


def save_adapter(path: str | os.PathLike, model: CometModel, base_fingerprint: str, base_name: str,
                 notes: dict | None = None) -> None:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.mem.adapter_state().items()}
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "config": model.cfg.to_dict(),
            "base_model": base_name, "base_fingerprint": base_fingerprint, "notes": notes or {}}
    atomic_write(path, st_save(tensors, metadata={"comet_adapter": json.dumps(meta)}))


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter's metadata ("comet_adapter") and tensors; an AdapterError for anything else."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["comet_adapter"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except FileNotFoundError:
        raise AdapterError(f"{path}: no such adapter file") from None
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise AdapterError(f"{path}: not a valid comet adapter ({one_line(e, 80)})") from None
    if meta.get("format") != ADAPTER_FORMAT or meta.get("version", 99) > ADAPTER_VERSION:
        raise AdapterError(f"{path}: unsupported adapter format {meta.get('format')} v{meta.get('version')}")
    return meta, tensors


def load_adapter(path: str | os.PathLike, lm: torch.nn.Module, base_fingerprint: str | None = None,
                 add_lora_targets: tuple[str, ...] = ()) -> tuple[CometModel, dict]:
    """Build a CometModel from `lm` and an adapter file. Checks the base-model fingerprint if given.
    `add_lora_targets`: LoRA targets the adapter lacks get LoRA too, starting with B = 0, so the model
    computes exactly what the adapter did (to train further with LoRA on more linears)."""
    meta, tensors = read_adapter(path)
    if base_fingerprint is not None and meta["base_fingerprint"] != base_fingerprint:
        raise AdapterError(f"{path}: adapter was trained for {meta.get('base_model')} "
                           f"(fingerprint {meta['base_fingerprint'][:12]}), not this model "
                           f"({base_fingerprint[:12]})")
    cfg = CometConfig.from_dict(meta["config"])
    new = tuple(t for t in add_lora_targets if t not in cfg.lora_targets) if cfg.lora_rank else ()
    model = CometModel.create(lm, replace(cfg, lora_targets=cfg.lora_targets + new))
    load_memory_tensors(model.mem, tensors, str(path), may_lack=new)
    return model, meta


def load_memory_tensors(mem: CometMemory, tensors: dict[str, torch.Tensor], where: str,
                        may_lack: tuple[str, ...] = ()) -> None:
    """Load adapter tensors into `mem`, which must have exactly these; `may_lack` names LoRA targets whose
    tensors may be absent (they keep their initialisation)."""
    own = mem.adapter_state()
    missing = {k for k in set(own) - set(tensors) if not any(k.split(".")[1].endswith(f"_{t}") for t in may_lack)}
    unexpected = set(tensors) - set(own)
    if missing or unexpected:
        raise AdapterError(f"{where}: adapter does not match the model (missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]})")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise AdapterError(f"{where}: adapter tensor {k} has shape {tuple(v.shape)}, "
                               f"the model needs {tuple(own[k].shape)}")
    mem.load_state_dict({k: v for k, v in tensors.items()}, strict=False)
