"""The application layer: load a backbone with its adapter, read text into a memory state, answer from it.

The CLI, evaluation, training and benchmarks all go through this module, so a change to how a model is
loaded or a question is answered lands once:

    engine = load("smollm2", "4bit")                       # backbone + the shipped adapter
    state = engine.read(["text ...", "more text ..."])     # any number of pieces, streamed
    print(engine.answer(state, "What is the pass key?"))   # the answer layout of answer.py

`Identity` is what a memory state is valid with (model, adapter, precision, settings); it is written into
every state file and checked when one is loaded. `SourceRecord` is the record of one input read into a state.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch

from .adapter import load_adapter
from .answer import prepare
from .config import CometConfig
from .errors import CometError, one_line
from .generate import generate
from .loading import DEFAULT_MODEL, Loaded, ModelError, load_model, model_fingerprint
from .memory import MemoryState
from .model import CometModel
from .prompt import NO_REPEAT_NGRAM, question_ids, stop_ids
from .reader import CPU_BLOCK, Reader

SHIPPED = "shipped"  # adapter="shipped": the adapter that ships for the model (comet_core/adapters/), if any


class SourceRecord(TypedDict, total=False):
    """One input read into a state (MemoryState.sources), saved with it and used to resume a read."""

    name: str  # as the user gave it
    path: str  # absolute path, or "-" for stdin
    kind: str  # text, gz, pdf, stdin
    size: int | None  # bytes (stdin: what was read)
    encoding: str | None
    unit: str  # what offset counts: "bytes" (of the uncompressed stream) or "pages"
    total: int | None  # offset at the end, when known
    offset: int  # where reading stopped
    sha256: str | None  # hash of the input up to offset (a PDF: the whole file)
    done: bool


def shipped_adapter(model: str | None = None) -> Path | None:
    """The adapter shipped for a named model (comet_core/adapters/<name>.safetensors), if there is one."""
    name = model or DEFAULT_MODEL
    if os.sep in name or "/" in name or name.endswith(".gguf"):
        return None
    path = Path(__file__).parent / "adapters" / f"{name}.safetensors"
    return path if path.is_file() else None


def model_spec(spec: str | None) -> str:
    """How a model is recorded in states: the default's name, or an absolute path."""
    if spec is None or spec == DEFAULT_MODEL:
        return DEFAULT_MODEL
    path = os.path.expanduser(spec)
    return os.path.abspath(path) if os.path.exists(path) else spec


@dataclass(frozen=True)
class Identity:
    """What a memory state is valid with. `meta()` goes into state files; `expect()` is what
    state_io.load_state checks a file against."""

    model: str  # the model's name
    model_spec: str  # "smollm2" or an absolute path (to load it again)
    adapter: str | None  # absolute path of an explicit adapter (None: the shipped one, or untrained memory)
    fingerprint: str  # base model + adapter weights + memory config
    precision: str
    settings: dict  # c, s, G, B_T (checked apart from the fingerprint, with a precise message)
    dtype: str  # activation dtype of the state tensors
    n_layers: int
    d: int

    def meta(self) -> dict:
        return {"model": self.model, "model_spec": self.model_spec, "adapter": self.adapter,
                "fingerprint": self.fingerprint, "precision": self.precision, "settings": dict(self.settings)}

    def expect(self) -> dict:
        return dict(self.meta(), dtype=self.dtype, n_layers=self.n_layers, d=self.d)


@dataclass
class Engine:
    """A loaded backbone with its CoMeT memory (`model`; None for a backbone loaded without memory)."""

    loaded: Loaded
    model: CometModel | None
    identity: Identity | None
    adapter_path: Path | None  # the adapter file the memory came from (None: untrained memory)
    base_fingerprint: str | None = None  # the backbone's (loading.model_fingerprint; adapters record it)

    @property
    def tok(self):
        return self.loaded.tokenizer

    @property
    def lm(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def precision(self) -> str:
        return self.loaded.precision

    @property
    def device(self) -> str:
        return str(self.loaded.device)

    @property
    def trained(self) -> bool:
        return self.adapter_path is not None

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    # ---- reading -------------------------------------------------------------------------------------
    def empty_state(self) -> MemoryState:
        return MemoryState.empty(self.model.n_layers)

    def reader(self, state: MemoryState | None = None, should_stop: Callable[[], bool] | None = None,
               on_chunks: Callable[[MemoryState], None] | None = None) -> Reader:
        """A streaming reader on this model (layer-major blocks of CPU_BLOCK chunks on a CPU, 8 on an
        accelerator)."""
        block = CPU_BLOCK if self.model.device.type == "cpu" else 8
        return Reader(self.model, self.tok, state, block=block, should_stop=should_stop, on_chunks=on_chunks)

    def read(self, pieces: Iterable[str] | str, state: MemoryState | None = None) -> MemoryState:
        """Read text (a string or pieces of one) into a copy of `state` (default: empty memory)."""
        reader = self.reader(state)
        for piece in [pieces] if isinstance(pieces, str) else pieces:
            reader.feed(piece)
        reader.finish()
        return reader.state

    # ---- answering -----------------------------------------------------------------------------------
    def answer_ids(self, state: MemoryState, question: str, priming: int | None = None,
                   max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int | None = None, no_repeat_ngram: int = NO_REPEAT_NGRAM) -> Iterator[int]:
        """Generated token ids of the answer to `question` from `state`, in the answer layout (answer.py;
        priming None: the adapter's). An empty question continues the text. `state` is not modified.
        no_repeat_ngram: see generate.generate."""
        q = question_ids(self.tok, question)
        if not q and not state.pending_ids:
            raise CometError("nothing to continue from: the memory has no pending text (ask a question)")
        st, prompt = prepare(self.model, state, q, self.model.cfg.priming if priming is None else priming)
        try:
            yield from generate(self.model, st, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, stop_ids=stop_ids(self.tok, self.lm.config), seed=seed,
                                n_vocab=len(self.tok), no_repeat_ngram=no_repeat_ngram)
        except ValueError as e:  # the live chunk would not fit the model's positions
            raise CometError(str(e)) from None

    def answer_stream(self, state: MemoryState, question: str, **kw) -> Iterator[tuple[str, int]]:
        """(text, tokens) pieces of the answer as it is generated, decoded incrementally (UTF-8 safe):
        a piece may be empty while a character is incomplete; the last piece may have 0 tokens."""
        ids: list[int] = []
        shown = ""
        for t in self.answer_ids(state, question, **kw):
            ids.append(t)
            text = self.tok.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd") or not text.startswith(shown):
                yield "", 1  # an incomplete character (or a re-spaced prefix): wait for more tokens
                continue
            yield text[len(shown):], 1
            shown = text
        text = self.tok.decode(ids, skip_special_tokens=True)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):], 0

    def answer(self, state: MemoryState, question: str, **kw) -> str:
        """The whole answer (greedy by default)."""
        with torch.no_grad():
            return "".join(text for text, _ in self.answer_stream(state, question, **kw))


def load(model: str | None = None, precision: str = "4bit", adapter: str | os.PathLike | None = SHIPPED, *,
         device: str | None = None, threads: int | None = None, trainable: bool = False, memory: bool = True,
         config: CometConfig | None = None, seed: int = 0, add_lora_targets: tuple[str, ...] = ()) -> Engine:
    """Load a backbone at `precision` with CoMeT memory.

    adapter: "shipped" (the model's shipped adapter, else an untrained memory), a path, or None (an
    untrained memory with `config`, default CometConfig(), initialised from `seed`). memory=False: the
    backbone alone (a full-attention baseline; its layers stay untouched). trainable: keep 4-bit layers
    differentiable. add_lora_targets: LoRA targets an adapter lacks are added at zero (to train further).
    threads: torch CPU threads (default: $OMP_NUM_THREADS, else every core). Errors are CometErrors.
    """
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        loaded = load_model(model, precision, device, trainable=trainable)
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError) as e:  # a broken model folder, out of memory, ...
        raise ModelError(f"cannot load model {model or DEFAULT_MODEL}: {one_line(e)}") from None
    if not memory:
        return Engine(loaded, None, None, None)
    base_fp = model_fingerprint(loaded.model)
    path = shipped_adapter(model) if adapter == SHIPPED else (Path(adapter) if adapter is not None else None)
    try:
        if path is not None:
            comet, _ = load_adapter(path, loaded.model, base_fp, add_lora_targets=add_lora_targets)
        else:
            comet = CometModel.create(loaded.model, config or CometConfig(), seed=seed)
    except ValueError as e:  # unsupported backbone, chunk longer than the model's positions
        raise ModelError(f"{loaded.name}: {e}") from None
    return Engine(loaded, comet, identity(loaded, comet, model, adapter, base_fp), path, base_fp)


def identity(loaded: Loaded, comet: CometModel, model: str | None, adapter, base_fp: str) -> Identity:
    """The identity of states made by this model. The settings (c, s, G, B_T) are checked on their own by
    load_state; every other config field that changes what a state means (sink, rank, LoRA) is hashed
    into the fingerprint with the adapter's weights. Priming is not: it is how a state is asked."""
    cfg = comet.cfg.to_dict()
    other = {k: v for k, v in sorted(cfg.items()) if k not in comet.cfg.settings() and k != "priming"}
    fp = hashlib.sha256(f"{base_fp}:{comet.adapter_hash()}:{json.dumps(other)}".encode()).hexdigest()
    explicit = None if adapter in (None, SHIPPED) else os.path.abspath(adapter)
    return Identity(loaded.name, model_spec(model), explicit, fp, loaded.precision, comet.cfg.settings(),
                    str(comet.dtype).removeprefix("torch."), comet.n_layers, comet.d)
