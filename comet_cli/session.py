"""The engine side of a command: load a model and its adapter, open the inputs, read them into a memory
state with resume bookkeeping, answer from it. Errors are `CliError` with a one-line message.

Resume protocol. Every input read into a state gets an entry in `state.sources`:
    {name, path, kind, size, encoding, unit, total, offset, sha256, done}
`offset` is where reading stopped (bytes of the uncompressed stream, or pages for a PDF) and `sha256` the
hash of the input up to there (the whole file for a PDF). When a read is interrupted (Ctrl-C) with --save,
the state is saved as it stands (everything up to `offset` is in it, partly as pending text) and the
metadata gets an "interrupted" record: the inputs of the command, the --state it started from and how many
inputs were finished. The same command run again finds that record in its --save file, checks that the
input did not change up to `offset`, and goes on from there; the result is identical to an uninterrupted
read because the reader's tokenization does not depend on where the text was split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from comet_core.sources import PdfSource, Source, SourceError, estimate_tokens, open_source

from .live import Display, Stats

SEPARATOR = "\n\n"  # fed between two inputs (and between an earlier read and new text)
NO_ADAPTER_NOTE = "no trained adapter for this model: memory is untrained"


class CliError(Exception):
    """A one-line, user-facing error; the command prints it and exits 1."""


class Stopped(Exception):
    """The read was interrupted by the user; the state is consistent (see ReadJob)."""


def abspath(p: str) -> str:
    return p if p == "-" else os.path.abspath(p)


# --- the model ----------------------------------------------------------------------------------------

def default_adapter(spec: str | None) -> Path | None:
    """The adapter shipped for a named model (comet_core/adapters/<name>.safetensors), if any."""
    import comet_core
    from comet_core.loading import DEFAULT_MODEL

    name = spec or DEFAULT_MODEL
    if os.sep in name or "/" in name or name.endswith(".gguf"):
        return None
    path = Path(comet_core.__file__).parent / "adapters" / f"{name}.safetensors"
    return path if path.is_file() else None


@dataclass
class Engine:
    loaded: object  # comet_core.loading.Loaded
    model: object  # comet_core.model.CometModel
    spec: str  # the model as recorded in states: "smollm2" or an absolute path
    adapter: str | None  # absolute path of an explicit --adapter (None: shipped default or untrained)
    trained: bool
    fingerprint: str

    @property
    def tok(self):
        return self.loaded.tokenizer

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def precision(self) -> str:
        return self.loaded.precision

    @property
    def device(self) -> str:
        return str(self.loaded.device)

    def meta(self) -> dict:
        """Metadata saved with every state (save_state adds counters, sources and checksums)."""
        return {"model": self.name, "model_spec": self.spec, "adapter": self.adapter,
                "fingerprint": self.fingerprint, "precision": self.precision,
                "settings": self.model.cfg.settings()}

    def expect(self) -> dict:
        """What load_state checks a state against."""
        return dict(self.meta(), dtype=str(self.model.dtype).removeprefix("torch."), n_layers=self.model.n_layers,
                    d=self.model.d)

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))


def model_spec(spec: str | None) -> str:
    from comet_core.loading import DEFAULT_MODEL

    if spec is None or spec == DEFAULT_MODEL:
        return DEFAULT_MODEL
    return os.path.abspath(os.path.expanduser(spec)) if os.path.exists(os.path.expanduser(spec)) else spec


def load_engine(spec: str | None, precision: str, device: str | None, adapter: str | None,
                display: Display, threads: int | None = None) -> Engine:
    import torch

    from comet_core.adapter import AdapterError, load_adapter
    from comet_core.config import CometConfig
    from comet_core.loading import ModelError, load_model, model_fingerprint
    from comet_core.model import CometModel

    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        loaded = load_model(spec, precision, device)
    except ModelError as e:
        raise CliError(str(e)) from None
    except (OSError, ValueError, RuntimeError) as e:  # a broken model folder, out of memory, ...
        raise CliError(f"cannot load model {spec or 'smollm2'}: {_oneline(e)}") from None
    base_fp = model_fingerprint(loaded.model)
    path = adapter or default_adapter(spec)
    try:
        if path is not None:
            model, _ = load_adapter(path, loaded.model, base_fp)
        else:
            display.note(NO_ADAPTER_NOTE)
            model = CometModel.create(loaded.model, CometConfig())
    except AdapterError as e:
        raise CliError(str(e)) from None
    except ValueError as e:  # unsupported backbone, chunk longer than the model's positions
        raise CliError(f"{loaded.name}: {e}") from None
    # settings() (c, s, G, B_T) are checked on their own by load_state, with a precise message; every other
    # field of the config (attention sink, rank, LoRA) also changes what a state means, so it is hashed here.
    cfg = model.cfg.to_dict()
    other = {k: v for k, v in sorted(cfg.items()) if k not in model.cfg.settings()}
    fingerprint = hashlib.sha256(f"{base_fp}:{model.adapter_hash()}:{json.dumps(other)}".encode()).hexdigest()
    return Engine(loaded, model, model_spec(spec), os.path.abspath(adapter) if adapter else None,
                  path is not None, fingerprint)


# --- inputs ---------------------------------------------------------------------------------------------

@dataclass
class Input:
    arg: str  # as given on the command line
    key: str  # absolute path, or "-" for stdin
    source: Source


def open_inputs(paths: list[str], encoding: str | None) -> list[Input]:
    """Open and check every input before anything slow happens (fail fast, one line)."""
    if paths.count("-") > 1:
        raise CliError("stdin ('-') can be read only once per command")
    out = []
    for p in paths:
        try:
            out.append(Input(p, abspath(p), open_source(p, encoding=encoding)))
        except SourceError as e:
            msg = str(e)
            raise CliError("stdin" + msg[1:] if p == "-" and msg.startswith("-:") else msg) from None
    return out


def looks_like_state(path: Path) -> bool:
    """Cheap check (header only) that a file is a comet state, so --save never clobbers anything else."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 << 20:
                return False
            return "comet" in (json.loads(f.read(n)).get("__metadata__") or {})
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(path: str, inputs: list[Input]) -> None:
    """Fail early (before reading for minutes) if a state cannot be written to `path`."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"cannot write state to {path}: is a directory")
    if any(i.key == abspath(path) for i in inputs):
        raise CliError(f"cannot write state to {path}: it is one of the inputs")
    if p.is_file() and p.stat().st_size and not looks_like_state(p):
        raise CliError(f"cannot write state to {path}: the file exists and is not a comet state "
                       "(refusing to overwrite it; remove it first)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"cannot write state to {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"cannot write state to {path}: permission denied (folder {parent})")
    if p.exists() and not os.access(p, os.W_OK):
        raise CliError(f"cannot write state to {path}: permission denied")


# --- reading --------------------------------------------------------------------------------------------

def new_entry(inp: Input) -> dict:
    s = inp.source
    return {"name": inp.arg, "path": inp.key, "kind": s.kind, "size": s.size, "encoding": s.encoding,
            "unit": s.unit, "total": s.total, "offset": 0, "sha256": None, "done": False}


class ReadJob:
    """Read inputs into a state, keeping `state.sources` and the resume record up to date.

    `resume` is the "interrupted" record of the state being continued (None: a fresh read). After
    `run()` (or a `Stopped` from it), `state` is consistent and `record()` says how to resume.
    """

    def __init__(self, engine: Engine, state, inputs: list[Input], base: str | None, resume: dict | None,
                 display: Display, stats: Stats, should_stop: Callable[[], bool]):
        from comet_core.reader import Reader

        self.engine, self.inputs, self.base, self.display, self.stats = engine, inputs, base, display, stats
        self.sources = [dict(s) for s in state.sources]
        self.start_tokens = state.tokens + len(state.pending_ids)
        self.finished = resume["done"] if resume else 0  # inputs fully read
        self.resume_entry = None
        if resume and self.finished < len(inputs) and self.sources:
            last = self.sources[-1]
            if not last.get("done") and last.get("path") == inputs[self.finished].key:
                self.resume_entry = last
        block = 1 if engine.model.device.type == "cpu" else 8
        self.reader = Reader(engine.model, engine.tok, state, block=block, should_stop=should_stop,
                             on_chunks=self._on_chunks)

    @property
    def state(self):
        return replace(self.reader.state, sources=self.sources)

    def record(self) -> dict | None:
        """The "interrupted" metadata record, or None when the stopped input cannot be resumed (stdin)."""
        if self.finished < len(self.inputs) and self.inputs[self.finished].key == "-":
            return None
        return {"inputs": [i.key for i in self.inputs], "base": self.base, "done": self.finished}

    def stopped_at(self) -> str:
        if self.finished >= len(self.inputs):
            return "after the last input"
        e = self.sources[-1]
        where = f"{e['unit']} {e['offset']:,}" if e["unit"] == "pages" else f"byte {e['offset']:,}"
        of = f" of {e['total']:,}" if e.get("total") else ""
        return f"{e['name']} at {where}{of}"

    def _tokens(self, st, final: bool = False) -> int:
        """Tokens read by this job: into memory while reading; pending ones included at the end."""
        return max(0, st.tokens + (len(st.pending_ids) if final else 0) - self.start_tokens)

    def _on_chunks(self, st) -> None:
        self.stats.update(self._tokens(st), st.chunks, st.nbytes())
        self.display.progress()

    def estimate(self) -> int | None:
        """Tokens this job is expected to read (None when an input's size is unknown)."""
        total = 0
        for i, inp in enumerate(self.inputs):
            if i < self.finished:
                continue
            est = estimate_tokens(inp.source, self.engine.count_tokens)
            if est is None:
                return None
            if i == self.finished and self.resume_entry is not None and inp.source.total:
                # what is left of the input, plus the text read but not yet tokenized (saved in the state)
                left = 1 - self.resume_entry["offset"] / inp.source.total
                if inp.source.unit == "bytes":
                    left += len(self.reader.state.pending_text.encode()) / inp.source.total
                est = round(est * left)
            total += est
        return total

    def run(self) -> None:
        from comet_core.reader import Interrupted

        n = len(self.inputs)
        try:
            for i in range(self.finished, n):
                self._read_one(i)
                self.finished = i + 1
            self.reader.finish()
        except Interrupted:
            raise Stopped() from None
        finally:
            st = self.reader.state
            self.stats.update(self._tokens(st, final=True), st.chunks, st.nbytes(), through_model=self._tokens(st))

    def _read_one(self, i: int) -> None:
        inp = self.inputs[i]
        self.display.source(inp.arg, i + 1)
        src, start = inp.source, 0
        entry, self.resume_entry = self.resume_entry, None  # only the first input of a resumed job
        if entry is not None:
            src, start = self._reopen(inp, entry), entry["offset"]
            self.display.note(f"resuming {inp.arg} at {self.stopped_at().split(' at ', 1)[1]}")
        else:
            st = self.reader.state
            entry = new_entry(inp)
            self.sources.append(entry)
            if any(s.get("path") == inp.key and s.get("done") and s.get("sha256") for s in self.sources[:-1]) \
                    and inp.key != "-":
                self.display.warn(f"{inp.arg} was already read into this memory; reading it again (appended)")
        st = self.reader.state
        sep = SEPARATOR if start == 0 and (st.tokens or st.pending_ids or st.pending_text) else ""
        try:
            for piece in src.pieces(start):
                try:
                    self.reader.feed(sep + piece.text)  # may raise Interrupted: this piece is in the state
                finally:
                    entry["offset"], entry["sha256"] = src.offset, src.sha256
                sep = ""
        except SourceError as e:
            raise CliError(str(e)) from None
        entry.update(offset=src.offset, sha256=src.sha256, done=True)
        if entry["kind"] == "stdin":
            entry["size"] = src.offset
        if isinstance(src, PdfSource) and src.errors:
            more = f" (and {len(src.errors) - 1} more)" if len(src.errors) > 1 else ""
            self.display.warn(f"{inp.arg}: {len(src.errors)} page(s) could not be read: {src.errors[0]}{more}")

    def _reopen(self, inp: Input, entry: dict) -> Source:
        """The input of an interrupted read, checked unchanged up to where it stopped."""
        try:
            src = open_source(inp.arg, encoding=entry.get("encoding"))
            if src.kind != entry.get("kind"):
                raise CliError(f"{inp.arg}: changed since the interrupted read (was {entry.get('kind')}, now "
                               f"{src.kind}); pass --restart to read it from the beginning")
            if src.sha256_prefix(entry["offset"]) != entry.get("sha256"):
                what = "the file" if src.kind == "pdf" else f"its first {entry['offset']:,} bytes"
                raise CliError(f"{inp.arg}: changed since the interrupted read ({what} differ); "
                               "pass --restart to read it from the beginning")
        except SourceError as e:
            raise CliError(str(e)) from None
        return src


# --- answering ------------------------------------------------------------------------------------------

def answer_stream(engine: Engine, state, question: str, max_new_tokens: int, temperature: float, top_p: float,
                  seed: int | None):
    """Yield pieces of answer text as tokens are generated (decoded incrementally, UTF-8 safe)."""
    from comet_core.generate import generate
    from comet_core.prompt import question_ids, stop_ids

    tok, lm = engine.tok, engine.loaded.model
    prompt = list(state.pending_ids) + question_ids(tok, question)
    if not prompt:
        raise CliError("nothing to continue from: the memory has no pending text (ask a question)")
    try:
        gen = generate(engine.model, state.to(engine.model.device), prompt, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, stop_ids=stop_ids(tok, lm.config), seed=seed,
                       n_vocab=len(tok))
        ids: list[int] = []
        shown = ""
        for t in gen:
            ids.append(t)
            text = tok.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd") or not text.startswith(shown):
                yield "", 1  # an incomplete character (or a re-spaced prefix): wait for more tokens
                continue
            yield text[len(shown):], 1
            shown = text
        text = tok.decode(ids, skip_special_tokens=True)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):], 0
    except ValueError as e:  # the live chunk would not fit the model's positions
        raise CliError(str(e)) from None


def _oneline(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"
