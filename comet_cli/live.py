"""Progress on stderr: a rich Live panel on a terminal, plain periodic lines when redirected, or nothing.

The command updates one `Stats` object as it goes (tokens, chunks, the source being read, the answer so
far); a display only renders it. The rich panel is redrawn by rich's own refresh thread (4 times a
second), so the clock, the RSS and "tokens/s now" stay live while the model is busy with a long chunk.
Nothing here ever writes to stdout: results go there, and only the command writes them.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import psutil

MiB = 1 << 20


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (getrusage: exact, model loading included)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def fmt_int(n: int | float) -> str:
    return f"{round(n):,}"


def fmt_bytes(n: int | float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


def fmt_duration(s: float) -> str:
    s = max(0, round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class Stats:
    """What a running command has done so far (updated by the command, rendered by a display)."""

    command: str
    model: str = ""
    phase: str = "starting"
    t0: float = field(default_factory=time.monotonic)
    read_t0: float | None = None
    read_t1: float | None = None
    tokens: int = 0  # tokens read by this command
    tokens_run: int = 0  # of those, the ones the model has run (the rest are pending for the live chunk)
    tokens_total_est: int | None = None  # tokens this command is expected to read (None: unknown)
    chunks: int = 0  # context chunks in the memory (all of them, earlier reads included)
    state_bytes: int = 0  # bytes of the memory-state tensors
    source: str = ""
    source_index: int = 0
    n_sources: int = 0
    answer: str = ""
    answer_tokens: int = 0
    answer_t0: float | None = None
    stopping: bool = False
    peak_rss: int = 0
    # following a file (or a stream) and checkpointing it
    follow: bool = False
    checkpoint_every: float | None = None  # seconds (None: no checkpoints)
    last_input: float | None = None  # monotonic time new input last arrived
    reopened: int = 0  # rotations and truncations of the followed file
    checkpoints: int = 0
    checkpoint_t: float | None = None  # monotonic time of the last checkpoint
    checkpoint_bytes: int = 0
    _window: deque = field(default_factory=lambda: deque(maxlen=16))

    def start_reading(self, total_est: int | None, n_sources: int) -> None:
        self.phase, self.read_t0, self.tokens_total_est, self.n_sources = "reading", time.monotonic(), total_est, \
            n_sources
        self._window.append((self.read_t0, 0))

    def update(self, tokens: int, chunks: int, state_bytes: int, through_model: int | None = None) -> None:
        """tokens: read so far; through_model: of those, the ones the model has run (default: all)."""
        self.tokens, self.chunks, self.state_bytes = tokens, chunks, state_bytes
        self.tokens_run = tokens if through_model is None else through_model
        self._window.append((time.monotonic(), self.tokens_run))

    def end_reading(self) -> None:
        self.read_t1 = time.monotonic()

    @property
    def read_seconds(self) -> float:
        if self.read_t0 is None:
            return 0.0
        return (self.read_t1 or time.monotonic()) - self.read_t0

    @property
    def rate_avg(self) -> float:
        s = self.read_seconds
        return self.tokens_run / s if s > 0 else 0.0

    @property
    def rate_now(self) -> float:
        """Tokens/s over the last few chunks, decaying while the current chunk is running."""
        if len(self._window) < 2 or self.read_t1 is not None:
            return self.rate_avg
        now = time.monotonic()
        # the base: the newest update at least 10 s old (or the oldest kept), so "now" spans 10 s or more
        t_old, n_old = next(((t, n) for t, n in reversed(self._window) if now - t >= 10.0), self._window[0])
        dt = now - t_old
        return (self.tokens_run - n_old) / dt if dt > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        if not self.tokens_total_est:
            return None
        if self.read_t1 is not None:
            return 1.0
        return min(0.99, self.tokens / self.tokens_total_est)

    @property
    def eta(self) -> float | None:
        if self.fraction is None or self.rate_avg <= 0 or self.read_t1 is not None:
            return None
        return max(0.0, self.tokens_total_est - self.tokens) / self.rate_avg

    @property
    def answer_rate(self) -> float:
        if self.answer_t0 is None or not self.answer_tokens:
            return 0.0
        return self.answer_tokens / max(1e-9, time.monotonic() - self.answer_t0)

    def checkpointed(self, nbytes: int) -> None:
        self.checkpoints, self.checkpoint_t, self.checkpoint_bytes = self.checkpoints + 1, time.monotonic(), nbytes

    @property
    def input_age(self) -> float | None:
        """Seconds since new input last arrived."""
        return None if self.last_input is None else time.monotonic() - self.last_input

    @property
    def checkpoint_age(self) -> float | None:
        return None if self.checkpoint_t is None else time.monotonic() - self.checkpoint_t

    def sample_rss(self) -> int:
        rss = rss_bytes()
        self.peak_rss = max(self.peak_rss, rss, peak_rss_bytes())
        return rss


class Display:
    """Quiet display: prints nothing but errors (which the command prints itself)."""

    def __init__(self, stats: Stats, verbose: bool = False):
        self.stats, self.verbose = stats, verbose

    def start(self) -> None:
        pass

    def note(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def phase(self, phase: str) -> None:
        self.stats.phase = phase

    def source(self, name: str, index: int) -> None:
        self.stats.source, self.stats.source_index = name, index

    def progress(self) -> None:
        pass

    def checkpoint(self, line: str) -> None:
        """A checkpoint was written (`line` describes it)."""

    def stopping(self) -> None:
        self.stats.stopping = True

    def answer_begin(self, stdout_shared: bool) -> None:
        self.stats.phase = "answering"
        self.stats.answer_t0 = time.monotonic()

    def answer_token(self, text: str, n_tokens: int = 1) -> None:
        self.stats.answer += text
        self.stats.answer_tokens += n_tokens

    def stop(self) -> None:
        pass

    def done(self, line: str) -> None:
        pass


class PlainDisplay(Display):
    """Plain lines on stderr (stderr redirected to a file or a pipe): at most one every `interval` seconds,
    one per chunk block with -v."""

    def __init__(self, stats: Stats, verbose: bool = False, interval: float = 5.0):
        super().__init__(stats, verbose)
        self.interval = interval
        self._last = 0.0

    def _emit(self, line: str) -> None:
        try:
            sys.stderr.write(f"comet: {line}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def note(self, msg: str) -> None:
        self._emit(msg)

    def warn(self, msg: str) -> None:
        self._emit(f"warning: {msg}")

    def phase(self, phase: str) -> None:
        super().phase(phase)
        if phase == "loading model":
            self._emit(f"loading {self.stats.model}")

    def source(self, name: str, index: int) -> None:
        super().source(name, index)
        if self.stats.n_sources > 1 or self.verbose:
            self._emit(f"reading {name} [{index}/{self.stats.n_sources}]")

    def progress(self) -> None:
        now = time.monotonic()
        if self.verbose or now - self._last >= self.interval:
            self._last = now
            self._emit(progress_line(self.stats))

    def checkpoint(self, line: str) -> None:
        self._emit(line)

    def stopping(self) -> None:
        super().stopping()
        # called from the SIGINT handler: a raw write, no locks
        try:
            os.write(2, b"comet: stopping after the chunks in progress (Ctrl-C again to quit at once)\n")
        except OSError:
            pass

    def done(self, line: str) -> None:
        self._emit(line)


def progress_line(s: Stats) -> str:
    total = f"/~{fmt_int(s.tokens_total_est)}" if s.tokens_total_est else ""
    frac = s.fraction
    pct = f" ({frac:.0%})" if frac is not None else ""
    eta = f"  ETA {fmt_duration(s.eta)}" if s.eta is not None else ""
    rss = s.sample_rss()
    src = f"{s.source} " if s.source else ""
    chunks = f"{s.chunks} chunk{'s' if s.chunks != 1 else ''}"
    line = (f"{src}{fmt_int(s.tokens)}{total} tokens{pct}{eta}  {fmt_int(s.rate_now)} tok/s now, "
            f"{fmt_int(s.rate_avg)} avg  {chunks}  RSS {fmt_bytes(rss)} (peak {fmt_bytes(s.peak_rss)})  "
            f"state {fmt_bytes(s.state_bytes)}")
    if s.follow or s.checkpoint_every:
        line += "  " + "  ".join(follow_status(s))
    return line


def follow_status(s: Stats) -> list[str]:
    """What the follow / checkpoint rows of the panel say, as short phrases."""
    out = []
    if s.follow and s.input_age is not None:
        out.append(f"last input {fmt_duration(s.input_age)} ago")
    if s.checkpoint_every:
        age = s.checkpoint_age
        out.append(f"checkpoint #{s.checkpoints} {fmt_duration(age)} ago" if age is not None
                   else f"no checkpoint yet (every {s.checkpoint_every:g} s)")
    return out


class LiveDisplay(Display):
    """A rich Live panel on stderr (a terminal)."""

    def __init__(self, stats: Stats, verbose: bool = False):
        super().__init__(stats, verbose)
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self._live = None
        self._answer_in_panel = False

    def start(self) -> None:
        from rich.live import Live

        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                          transient=False, redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def note(self, msg: str) -> None:
        self.console.print(f"[dim]comet:[/dim] {_escape(msg)}")

    def warn(self, msg: str) -> None:
        self.console.print(f"[yellow]comet: warning:[/yellow] {_escape(msg)}")

    def answer_begin(self, stdout_shared: bool) -> None:
        if stdout_shared:  # the answer goes to the same terminal: freeze the panel, leave the screen to it
            self.stats.phase = "read"
            self.stop()
        else:
            self._answer_in_panel = True
        super().answer_begin(stdout_shared)

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def done(self, line: str) -> None:
        self.stop()
        self.console.print(f"[dim]comet:[/dim] {_escape(line)}")

    def _render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.stats
        rss = s.sample_rss()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", justify="right", no_wrap=True)
        grid.add_column(overflow="ellipsis", no_wrap=True)
        if s.source:
            n = f"  [{s.source_index}/{s.n_sources}]" if s.n_sources > 1 else ""
            how = "  (following" + (f", reopened {s.reopened}×" if s.reopened else "") + ")" if s.follow else ""
            grid.add_row("source", Text(s.source + n + how))
        if s.read_t0 is not None:
            frac = s.fraction
            total = f" / ~{fmt_int(s.tokens_total_est)}" if s.tokens_total_est else ""
            pct = f"  {frac:.0%}" if frac is not None else ""
            eta = f"  ETA {fmt_duration(s.eta)}" if s.eta is not None else ""
            grid.add_row("tokens", f"{fmt_int(s.tokens)}{total}{pct}{eta}")
            if frac is not None:
                grid.add_row("", ProgressBar(total=1.0, completed=frac, width=40))
            grid.add_row("speed", f"{fmt_int(s.rate_now)} tok/s now · {fmt_int(s.rate_avg)} avg")
            grid.add_row("chunks", str(s.chunks))
            if s.follow and s.input_age is not None:
                grid.add_row("input", f"last input {fmt_duration(s.input_age)} ago"
                                      + (" · waiting for more" if s.input_age >= 1 else ""))
            if s.checkpoint_every:
                age = s.checkpoint_age
                grid.add_row("checkpoint", f"#{s.checkpoints} {fmt_duration(age)} ago · {fmt_bytes(s.checkpoint_bytes)}"
                                           f" · every {s.checkpoint_every:g} s" if age is not None
                             else f"none yet · every {s.checkpoint_every:g} s")
        grid.add_row("memory", f"RSS {fmt_bytes(rss)} (peak {fmt_bytes(s.peak_rss)}) · "
                               f"state {fmt_bytes(s.state_bytes)}")
        if s.answer_t0 is not None:
            grid.add_row("answer", f"{s.answer_tokens} tokens · {s.answer_rate:.1f} tok/s")
        status = "stopping after the chunks in progress (Ctrl-C again to quit at once)" if s.stopping else s.phase
        title = f"comet {s.command} · {s.model}" if s.model else f"comet {s.command}"
        parts = [grid]
        if self._answer_in_panel and s.answer:
            lines = s.answer.splitlines()[-12:]
            parts += [Text(""), Text("\n".join(lines))]
        return Panel(Group(*parts), title=title, title_align="left",
                     subtitle=f"{status} · {fmt_duration(time.monotonic() - s.t0)}", subtitle_align="right",
                     border_style="yellow" if s.stopping else "cyan", expand=False)


def _escape(msg: str) -> str:
    from rich.markup import escape

    return escape(msg)


def make_display(stats: Stats, quiet: bool, verbose: bool) -> Display:
    if quiet:
        return Display(stats, verbose)
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return LiveDisplay(stats, verbose)
    return PlainDisplay(stats, verbose)
