"""The engine side of a command: load a model and its adapter, open the inputs, read them into a memory
state with resume bookkeeping, answer from it. Errors are comet_core's `CometError` with a one-line message.

Resume protocol. Every input read into a state gets an entry in `state.sources` (engine.SourceRecord):
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

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from comet_core.errors import CometError
from comet_core.sources import PdfSource, Source, SourceError, estimate_tokens, open_source

from .live import Display, Stats

if TYPE_CHECKING:
    from comet_core.engine import SourceRecord

SEPARATOR = "\n\n"  # fed between two inputs (and between an earlier read and new text)
NO_ADAPTER_NOTE = "no trained adapter for this model: memory is untrained"


def abspath(p: str) -> str:
    return p if p == "-" else os.path.abspath(p)


def load_engine(spec: str | None, precision: str, device: str | None, adapter: str | None,
                display: Display, threads: int | None = None):
    """comet_core.engine.load with the CLI's note when the memory is untrained."""
    from comet_core.engine import SHIPPED, load

    engine = load(spec, precision, adapter or SHIPPED, device=device, threads=threads)
    if not engine.trained:
        display.note(NO_ADAPTER_NOTE)
    return engine


# --- inputs ---------------------------------------------------------------------------------------------

@dataclass
class Input:
    arg: str  # as given on the command line
    key: str  # absolute path, or "-" for stdin
    source: Source


def open_inputs(paths: list[str], encoding: str | None) -> list[Input]:
    """Open and check every input before anything slow happens (fail fast, one line)."""
    if paths.count("-") > 1:
        raise CometError("stdin ('-') can be read only once per command")
    out = []
    for p in paths:
        try:
            out.append(Input(p, abspath(p), open_source(p, encoding=encoding)))
        except SourceError as e:
            msg = str(e)
            raise CometError("stdin" + msg[1:] if p == "-" and msg.startswith("-:") else msg) from None
    return out


def looks_like_state(path: Path) -> bool:
    """Cheap check (header only) that a file is a comet state, so --save never clobbers anything else."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return "comet" in (f.metadata() or {})
    except Exception:  # not safetensors at all: safe_open raises its own error types
        return False


def check_writable(path: str, inputs: list[Input]) -> None:
    """Fail early (before reading for minutes) if a state cannot be written to `path`."""
    p = Path(path)
    if p.is_dir():
        raise CometError(f"cannot write state to {path}: is a directory")
    if any(i.key == abspath(path) for i in inputs):
        raise CometError(f"cannot write state to {path}: it is one of the inputs")
    if p.is_file() and p.stat().st_size and not looks_like_state(p):
        raise CometError(f"cannot write state to {path}: the file exists and is not a comet state "
                       "(refusing to overwrite it; remove it first)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CometError(f"cannot write state to {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CometError(f"cannot write state to {path}: permission denied (folder {parent})")
    if p.exists() and not os.access(p, os.W_OK):
        raise CometError(f"cannot write state to {path}: permission denied")


# --- reading --------------------------------------------------------------------------------------------

def new_entry(inp: Input) -> SourceRecord:
    s = inp.source
    return {"name": inp.arg, "path": inp.key, "kind": s.kind, "size": s.size, "encoding": s.encoding,
            "unit": s.unit, "total": s.total, "offset": 0, "sha256": None, "done": False}


class ReadJob:
    """Read inputs into a state, keeping `state.sources` and the resume record up to date.

    `resume` is the "interrupted" record of the state being continued (None: a fresh read). After
    `run()` (or a reader.Interrupted from it), `state` is consistent and `record()` says how to resume.
    """

    def __init__(self, engine, state, inputs: list[Input], base: str | None, resume: dict | None,
                 display: Display, stats: Stats, should_stop: Callable[[], bool]):
        self.engine, self.inputs, self.base, self.display, self.stats = engine, inputs, base, display, stats
        self.sources = [dict(s) for s in state.sources]
        self.start_tokens = state.tokens + len(state.pending_ids)
        self.finished = resume["done"] if resume else 0  # inputs fully read
        self.resume_entry = None
        if resume and self.finished < len(inputs) and self.sources:
            last = self.sources[-1]
            if not last.get("done") and last.get("path") == inputs[self.finished].key:
                self.resume_entry = last
        self.reader = engine.reader(state, should_stop=should_stop, on_chunks=self._on_chunks)

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
        """Read every input not yet finished; raises reader.Interrupted when should_stop() asked to stop."""
        n = len(self.inputs)
        try:
            for i in range(self.finished, n):
                self._read_one(i)
                self.finished = i + 1
            self.reader.finish()
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
        for piece in src.pieces(start):  # a SourceError (a CometError) ends the command with its message
            try:
                self.reader.feed(sep + piece.text)  # may raise Interrupted: this piece is in the state
            finally:
                entry["offset"], entry["sha256"] = src.offset, src.sha256
            sep = ""
        entry.update(offset=src.offset, sha256=src.sha256, done=True)
        if entry["kind"] == "stdin":
            entry["size"] = src.offset
        if isinstance(src, PdfSource) and src.errors:
            more = f" (and {len(src.errors) - 1} more)" if len(src.errors) > 1 else ""
            self.display.warn(f"{inp.arg}: {len(src.errors)} page(s) could not be read: {src.errors[0]}{more}")

    def _reopen(self, inp: Input, entry: SourceRecord) -> Source:
        """The input of an interrupted read, checked unchanged up to where it stopped."""
        src = open_source(inp.arg, encoding=entry.get("encoding"))
        if src.kind != entry.get("kind"):
            raise CometError(f"{inp.arg}: changed since the interrupted read (was {entry.get('kind')}, now "
                             f"{src.kind}); pass --restart to read it from the beginning")
        if src.sha256_prefix(entry["offset"]) != entry.get("sha256"):
            what = "the file" if src.kind == "pdf" else f"its first {entry['offset']:,} bytes"
            raise CometError(f"{inp.arg}: changed since the interrupted read ({what} differ); "
                             "pass --restart to read it from the beginning")
        return src
