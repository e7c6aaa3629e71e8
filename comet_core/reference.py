"""Import a checkpoint saved by the reference CoMeT implementation (LivingFutureLab/Comet, Qwen3).

Its layout (docs/reference-layout.md): `model.layers.N.inner_layer.*` (a stock Qwen3 layer),
`model.layers.N.global_memory_net.{norm, g_proj, o_proj.down_proj, o_proj.up_proj}.weight`,
`model.layers.N.temp_memory_net.{0 (norm), 1.down_proj, 1.up_proj}.weight`, and the memory tokens
`<|memory|>`, `<beacon_0..G-1>`, `<beacon>` in its tokenizer and embedding table; config.json adds
chunk_size, temp_beacon_stride, temp_mem_budget, global_beacon_ids, placeholder_id, temp_beacon_id.

We write two things into an output folder: a plain Hugging Face Qwen3 model (inner_layer stripped, the
tokenizer without the memory tokens, so the text "<beacon>" is text again) and a comet adapter
(`adapter.safetensors`) holding the memory nets and the beacon embedding rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from .adapter import save_adapter
from .config import CometConfig
from .errors import CometError
from .model import CometModel

MEMORY_TOKEN = re.compile(r"^<(\|memory\||beacon(_\d+)?)>$")


class ReferenceError(CometError):
    """A folder that is not a usable reference checkpoint; one line for the user."""


def _load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (ckpt / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ReferenceError(f"{ckpt}: no model.safetensors (or index) found")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(ckpt / f)))
    return weights


def _clean_tokenizer(ckpt: Path) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer with the memory tokens removed from its added vocabulary."""
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if not MEMORY_TOKEN.match(t["content"])]
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text()) if (ckpt / "tokenizer_config.json").exists() else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)))
    for key in ("eos_token", "pad_token", "bos_token", "unk_token"):
        val = cfg.get(key)
        if isinstance(val, dict):
            val = val.get("content")
        if val and not MEMORY_TOKEN.match(val):
            setattr(fast, key, val)
    template = cfg.get("chat_template")
    if template is None and (ckpt / "chat_template.jinja").exists():
        template = (ckpt / "chat_template.jinja").read_text()
    fast.chat_template = template
    return fast


def import_reference(ckpt: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Convert a reference checkpoint folder; returns (model folder, adapter path)."""
    ckpt, out = Path(ckpt), Path(out)
    try:
        raw = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReferenceError(f"{ckpt}: cannot read config.json ({e})") from None
    if "global_beacon_ids" not in raw or raw.get("model_type") != "qwen3":
        raise ReferenceError(f"{ckpt}: not a reference CoMeT-Qwen3 checkpoint (no global_beacon_ids)")
    g_ids, t_id = list(raw["global_beacon_ids"]), raw["temp_beacon_id"]
    stride = raw.get("temp_beacon_stride", 8)
    if stride == -1 or not g_ids:
        raise ReferenceError(f"{ckpt}: checkpoints without temp or global memory are not supported")
    cfg = CometConfig(chunk_size=raw["chunk_size"], stride=stride, n_global=len(g_ids),
                      budget=raw.get("temp_mem_budget", 128), sink=False)  # the reference has no sink

    weights = _load_weights(ckpt)
    base, mem = {}, {}
    for k, v in weights.items():
        if ".global_memory_net." in k or ".temp_memory_net." in k:
            mem[k] = v
        else:
            base[k.replace(".inner_layer.", ".")] = v
    extra = {k: raw[k] for k in ("chunk_size", "temp_beacon_stride", "temp_mem_budget", "global_beacon_ids",
                                 "placeholder_id", "temp_beacon_id", "architectures", "auto_map") if k in raw}
    qcfg = Qwen3Config(**{k: v for k, v in raw.items() if k not in extra})
    qcfg.vocab_size = base["model.embed_tokens.weight"].shape[0]
    lm = AutoModelForCausalLM.from_config(qcfg, attn_implementation="sdpa", dtype=torch.float32)
    if "lm_head.weight" not in base and qcfg.tie_word_embeddings:
        base["lm_head.weight"] = base["model.embed_tokens.weight"]
    missing, unexpected = lm.load_state_dict({k: v.float() for k, v in base.items()}, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise ReferenceError(f"{ckpt}: backbone keys do not match Qwen3 (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    lm.tie_weights()
    model = CometModel.create(lm, cfg)
    own = model.mem.state_dict()
    emb = base["model.embed_tokens.weight"].float()
    own["special"] = torch.cat([emb[t_id][None], emb[g_ids]])  # row 0: temp beacon, 1..G: global beacons
    for l in range(lm.config.num_hidden_layers):
        src = f"model.layers.{l}."
        pairs = {
            f"global_nets.{l}.norm.weight": "global_memory_net.norm.weight",
            f"global_nets.{l}.g_proj.weight": "global_memory_net.g_proj.weight",
            f"global_nets.{l}.o_proj.down.weight": "global_memory_net.o_proj.down_proj.weight",
            f"global_nets.{l}.o_proj.up.weight": "global_memory_net.o_proj.up_proj.weight",
            f"temp_nets.{l}.norm.weight": "temp_memory_net.0.weight",
            f"temp_nets.{l}.o_proj.down.weight": "temp_memory_net.1.down_proj.weight",
            f"temp_nets.{l}.o_proj.up.weight": "temp_memory_net.1.up_proj.weight",
        }
        for ours, theirs in pairs.items():
            if src + theirs not in mem:
                raise ReferenceError(f"{ckpt}: missing {src + theirs}")
            if mem[src + theirs].shape != own[ours].shape:
                raise ReferenceError(f"{ckpt}: {src + theirs} has shape {tuple(mem[src + theirs].shape)}")
            own[ours] = mem[src + theirs].float()
    model.mem.load_state_dict(own)

    out.mkdir(parents=True, exist_ok=True)
    lm.config.architectures = ["Qwen3ForCausalLM"]
    lm.save_pretrained(out)
    _clean_tokenizer(ckpt).save_pretrained(out)
    from .loading import model_fingerprint  # local import: loading pulls in bitsandbytes
    save_adapter(out / "adapter.safetensors", model, model_fingerprint(lm), f"reference:{ckpt.name}",
                 notes={"imported_from": str(ckpt), "reference_global_norm_eps": "dtype eps (ours: 1e-6)"})
    return out, out / "adapter.safetensors"
