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

Checkpoints (--checkpoint-every, --follow). While a read goes on, the state is saved at a steady rhythm,
each time at a point where the reader's state and the recorded offsets agree: right after a chunk block
(the piece being fed is then wholly in the state, run or pending, and the source's offset is the end of
that piece) or while waiting for more input (offset = the end of the last piece fed). The pending text
and tokens are saved too, so "offset = bytes fed so far" holds exactly, and a checkpoint carries the same
"interrupted" record as a Ctrl-C: after a crash (kill -9), the same command resumes from the last
checkpoint, reading nothing twice and skipping nothing. A stdin read cannot be resumed: its checkpoint
holds what was read up to it, and rerunning with `--state S --save S` appends what then comes on stdin.

Following (--follow). The file is read to its end, then what is appended (sources.TextSource.follow).
When the file is rotated or truncated, the entry of the old content is closed (done) and a new entry
starts at offset 0 of the new content, so `state.sources` keeps one entry per file generation and a
resumed follow continues the newest. A followed file that no longer matches its checkpoint when the
command is run again (rotated or truncated meanwhile) is followed from the start of its new content.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from comet_core.errors import CometError
from comet_core.sources import (
    FOLLOW_POLL,
    PdfSource,
    Reopened,
    Source,
    SourceError,
    StreamSource,
    TextSource,
    estimate_tokens,
    open_source,
)

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


def open_inputs(paths: list[str], encoding: str | None, follow: bool = False) -> list[Input]:
    """Open and check every input before anything slow happens (fail fast, one line)."""
    if paths.count("-") > 1:
        raise CometError("stdin ('-') can be read only once per command")
    out = []
    for p in paths:
        try:
            out.append(Input(p, abspath(p), open_source(p, encoding=encoding, follow=follow)))
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

def new_entry(inp: Input, src: Source | None = None) -> SourceRecord:
    s = src or inp.source
    return {"name": inp.arg, "path": inp.key, "kind": s.kind, "size": s.size, "encoding": s.encoding,
            "unit": s.unit, "total": s.total, "offset": 0, "sha256": None, "done": False}


class ReadJob:
    """Read inputs into a state, keeping `state.sources` and the resume record up to date.

    `resume` is the "interrupted" record of the state being continued (None: a fresh read). After
    `run()` (or a reader.Interrupted from it), `state` is consistent and `record()` says how to resume.

    follow: the (single) text input is followed like `tail -F` until Ctrl-C or `idle_exit` seconds without
    new input. checkpoint_every: seconds between two calls of `on_checkpoint(job)` (which saves `state`
    with `record()`), made only at consistent points and only when something was read since the last.
    """

    def __init__(self, engine, state, inputs: list[Input], base: str | None, resume: dict | None,
                 display: Display, stats: Stats, should_stop: Callable[[], bool], *, follow: bool = False,
                 checkpoint_every: float | None = None, on_checkpoint: Callable[[ReadJob], None] | None = None,
                 idle_exit: float | None = None, poll: float = FOLLOW_POLL):
        self.engine, self.inputs, self.base, self.display, self.stats = engine, inputs, base, display, stats
        self.sources = [dict(s) for s in state.sources]
        self.start_tokens = state.tokens + len(state.pending_ids)
        self.finished = resume["done"] if resume else 0  # inputs fully read
        self.resume_entry = None
        if resume and self.finished < len(inputs) and self.sources:
            last = self.sources[-1]
            if not last.get("done") and last.get("path") == inputs[self.finished].key:
                self.resume_entry = last
        self.should_stop = should_stop
        self.follow, self.idle_exit, self.poll = follow, idle_exit, poll
        self.checkpoint_every = checkpoint_every if checkpoint_every and on_checkpoint else None
        self.on_checkpoint = on_checkpoint
        self.checkpoints = 0  # checkpoints written (by on_checkpoint)
        self._current: tuple[SourceRecord, Source] | None = None  # the entry being read and its source
        self.reader = engine.reader(state, should_stop=should_stop, on_chunks=self._on_chunks)
        self._fed = 0  # pieces fed so far
        self._saved_mark = self._mark()  # the reader's progress at the last checkpoint (or the start)
        self._last_checkpoint = time.monotonic()
        self.stats.last_input = time.monotonic()

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
        if self._current is not None and self._checkpoint_due():
            entry, src = self._current
            # the piece being fed is wholly in the state (run, or pending), and the source's offset is its end
            entry["offset"], entry["sha256"] = src.offset, src.sha256
            self._checkpoint()

    def _idle(self) -> bool:
        """Called by the source while no input comes: stop on Ctrl-C, checkpoint, end after --idle-exit."""
        from comet_core.reader import Interrupted

        if self.should_stop():
            raise Interrupted()
        if self._checkpoint_due():  # the entry's offset is the end of the last piece fed: consistent
            self._checkpoint()
        return bool(self.idle_exit) and time.monotonic() - self.stats.last_input >= self.idle_exit

    def _mark(self) -> tuple[int, int, int]:
        """What changes when the reader gets on: pieces fed, chunks run, tokens pending."""
        st = self.reader.state
        return self._fed, st.chunks, len(st.pending_ids)

    def _checkpoint_due(self) -> bool:
        return (self.checkpoint_every is not None
                and time.monotonic() - self._last_checkpoint >= self.checkpoint_every
                and self._mark() != self._saved_mark)

    def _checkpoint(self) -> None:
        self._saved_mark, self._last_checkpoint = self._mark(), time.monotonic()
        if self._current is not None and self.follow:
            entry, src = self._current
            if not entry.get("done") and src.kind == "text":
                entry["size"], entry["total"] = src.size, src.total
        self.checkpoints += 1
        self.on_checkpoint(self)

    def estimate(self) -> int | None:
        """Tokens this job is expected to read (None when an input's size is unknown)."""
        if self.follow:
            return None
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
            src, start, entry = self._reopen(inp, entry)
        elif (prev := self._read_before(inp)) is not None:  # following on from a state that read this file
            entry, start = prev, prev["offset"]
            entry["done"] = False
            self.display.note(f"{inp.arg}: this memory read it up to byte {start:,}; following on from there")
        else:
            entry = new_entry(inp)
            self.sources.append(entry)
            if any(s.get("path") == inp.key and s.get("done") and s.get("sha256") for s in self.sources[:-1]) \
                    and inp.key != "-":
                self.display.warn(f"{inp.arg} was already read into this memory; reading it again (appended)")
        st = self.reader.state
        sep = SEPARATOR if start == 0 and (st.tokens or st.pending_ids or st.pending_text) else ""
        self._current = (entry, src)
        for item in self._items(src, start):  # a SourceError (a CometError) ends the command with its message
            if isinstance(item, Reopened):
                entry = self._new_content(inp, entry, src, item.reason)
                continue
            self.stats.last_input = time.monotonic()
            self._fed += 1
            try:
                self.reader.feed(sep + item.text)  # may raise Interrupted: this piece is in the state
            finally:
                entry["offset"], entry["sha256"] = src.offset, src.sha256
            sep = ""
        entry.update(offset=src.offset, sha256=src.sha256, done=True)
        if entry["kind"] == "stdin":
            entry["size"] = src.offset
        elif self.follow:
            entry["size"], entry["total"] = src.size, src.total
        if isinstance(src, PdfSource) and src.errors:
            more = f" (and {len(src.errors) - 1} more)" if len(src.errors) > 1 else ""
            self.display.warn(f"{inp.arg}: {len(src.errors)} page(s) could not be read: {src.errors[0]}{more}")

    def _read_before(self, inp: Input) -> SourceRecord | None:
        """With --follow: the record of this same file, if it is the last thing this memory read and the file
        still starts with exactly what was read (then following continues after it, reading nothing twice;
        one follow stopped and started again gives the memory of one uninterrupted follow)."""
        last = self.sources[-1] if self.sources else None
        if not (self.follow and last and last.get("path") == inp.key and last.get("kind") == "text"
                and last.get("done") and last.get("sha256") and last.get("offset")):
            return None
        src = inp.source
        size = os.stat(inp.key).st_size if os.path.exists(inp.key) else 0
        if size < last["offset"] or src.sha256_prefix(last["offset"]) != last["sha256"]:
            return None  # rotated or rewritten since: the new content is read from its start (appended)
        return last

    def _items(self, src: Source, start: int):
        """The source's pieces; followed, or with the idle hook for a stream (Ctrl-C and checkpoints while
        the producer is quiet)."""
        if self.follow and isinstance(src, TextSource):
            return src.follow(start, self._idle, self.poll)
        if isinstance(src, StreamSource):
            return src.pieces(start, idle=self._idle, poll=self.poll)
        return src.pieces(start)

    def _new_content(self, inp: Input, entry: SourceRecord, src: Source, reason: str) -> SourceRecord:
        """A followed file was rotated or truncated: close its entry, open one for the new content."""
        entry["done"] = True
        what = "rotated (a new file under the same name)" if reason == "rotated" else "truncated"
        self.display.note(f"{inp.arg} was {what}: reading the new content from its start")
        new = new_entry(inp, src)
        new["sha256"] = src.sha256  # of nothing yet: a checkpoint before the first piece resumes at 0
        self.sources.append(new)
        self._current = (new, src)
        self.stats.reopened += 1
        return new

    def _reopen(self, inp: Input, entry: SourceRecord) -> tuple[Source, int, SourceRecord]:
        """The input of an interrupted read, checked unchanged up to where it stopped: (source, where to
        start, its entry). A followed file that changed meanwhile is followed from its new start."""
        inp.source.close()
        src = open_source(inp.arg, encoding=entry.get("encoding"), follow=self.follow)
        if src.kind != entry.get("kind"):
            raise CometError(f"{inp.arg}: changed since the interrupted read (was {entry.get('kind')}, now "
                             f"{src.kind}); pass --restart to read it from the beginning")
        if entry["offset"] and src.sha256_prefix(entry["offset"]) != entry.get("sha256"):
            if self.follow:
                entry["done"] = True
                self.display.note(f"{inp.arg} changed since the checkpoint at byte {entry['offset']:,} (rotated "
                                  "or truncated): following it from the start of its new content")
                new = new_entry(inp, src)
                self.sources.append(new)
                return src, 0, new
            what = "the file" if src.kind == "pdf" else f"its first {entry['offset']:,} bytes"
            raise CometError(f"{inp.arg}: changed since the interrupted read ({what} differ); "
                             "pass --restart to read it from the beginning")
        self.display.note(f"resuming {inp.arg} at {self.stopped_at().split(' at ', 1)[1]}")
        return src, entry["offset"], entry
