"""The `comet` command: summarize, ask, read, info.

Results go to stdout, progress and errors to stderr. Exit codes: 0 ok, 1 error (one line on stderr:
"comet: error: ..."), 2 usage error, 130 interrupted (Ctrl-C), 141 stdout closed early (broken pipe,
quietly, like any Unix filter). Heavy imports (torch, transformers) happen only once the arguments and
inputs have been checked, so mistakes are reported at once.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import stat
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from comet_core import __version__
from comet_core.errors import CometError
from comet_core.prompt import NO_REPEAT_NGRAM

from .live import Display, LiveDisplay, Stats, fmt_bytes, fmt_duration, fmt_int, make_display, peak_rss_bytes
from .options import QUIET, VERBOSE, json_option, model_option, precision_option, stack, threads_option
from .session import ReadJob, abspath, check_writable, load_engine, open_inputs

if TYPE_CHECKING:
    from comet_core.state_io import StateFile

EXIT_INTERRUPTED, EXIT_PIPE = 130, 141
_debug = bool(os.environ.get("COMET_DEBUG"))


def _err(msg: str) -> None:
    try:
        sys.stderr.write(f"comet: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _err_line(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class OneLineError(click.ClickException):
    """One line on stderr, exit 1."""

    def show(self, file=None) -> None:  # (CometGroup.main prints it; this is for click's own paths)
        _err(f"error: {self.message}")


# Commands defined elsewhere, imported only when used (they pull in torch): name -> (module, attribute, help).
LAZY_COMMANDS = {
    "train": ("comet_cli.train_cmd", "train", "Fine-tune CoMeT memory onto a base model (adapter training)."),
    "eval": ("comet_cli.eval_cmd", "eval_group", "Measure CoMeT against full attention and an untrained adapter."),
}


class CometGroup(click.Group):
    """Turns every failure into a one-line message and a meaningful exit code (never a traceback).

    Also loads the heavier commands (train, eval) only when they are invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in LAZY_COMMANDS if self._lazy_available(n)})

    def get_command(self, ctx: click.Context, name: str):
        if name in LAZY_COMMANDS and name not in self.commands and self._lazy_available(name):
            import importlib

            module, attr, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    @staticmethod
    def _lazy_available(name: str) -> bool:
        import importlib.util

        return importlib.util.find_spec(LAZY_COMMANDS[name][0]) is not None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(formatter.width - 20)))
            else:
                rows.append((name, LAZY_COMMANDS[name][2]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's main, with every error in one format: `comet: error: <message>` on stderr, exit 1; a
        usage error adds the usage line and exits 2."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            _err(f"error: {e.format_message()}")
            if e.ctx is not None:
                usage = e.ctx.get_usage().removeprefix("Usage: ")
                _err_line(f"Usage: {usage}  ({e.ctx.command_path} --help for more)")
            sys.exit(e.exit_code)
        except click.ClickException as e:
            _err(f"error: {e.format_message()}")
            sys.exit(e.exit_code)
        except click.Abort:
            _show_cursor()
            _err("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            _show_cursor()
            _err("interrupted")
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _silence_stdout()
            raise click.exceptions.Exit(EXIT_PIPE) from None
        except CometError as e:
            raise OneLineError(str(e)) from None
        except Exception as e:
            if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
                raise OneLineError("out of memory (try a smaller --precision, or a machine with more memory)") \
                    from None
            if _debug:
                traceback.print_exc()
            msg = " ".join(str(e).split())[:300]
            raise OneLineError(f"internal error: {type(e).__name__}: {msg} (COMET_DEBUG=1 shows the traceback)") \
                from None


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _show_cursor() -> None:
    try:
        if sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


@click.group(cls=CometGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="comet")
def cli() -> None:
    """Read documents of any length through a small LLM with CoMeT memory, in constant memory.

    \b
    Examples:
      comet summarize book.pdf
      comet ask app.log "Why did the nightly job fail?"   # inputs first, the question last
      journalctl -b | comet ask "Which service restarted most?"
      comet read book.txt --save book.comet          # read once ...
      comet ask --state book.comet "Who is Banquo?"   # ... ask many times, in seconds
      tail -n 1000 app.log | comet read - --state app.comet --save app.comet
      comet info book.comet

    \b
    Defaults: SmolLM2-135M-Instruct (shipped offline) at 4bit with the shipped adapter, every CPU core
    ($OMP_NUM_THREADS or --threads to change), answers of at most 256 tokens, greedy.

    Results go to stdout, progress and errors to stderr. Exit status: 0 ok, 1 error (one line
    "comet: error: ..."), 2 usage error, 130 interrupted (with --save, the state so far is saved: run the
    same command again to resume), 141 stdout closed early (e.g. | head). COMET_DEBUG=1 shows tracebacks.
    `comet COMMAND --help` has each command's options and examples.
    """


# --- options (the ones every command shares live in options.py) ------------------------------------------

model_options = stack(
    model_option(" Default with --state: the state's model."),
    click.option("--adapter", metavar="PATH", type=click.Path(exists=True, dir_okay=False),
                 help="CoMeT adapter (.safetensors) to use instead of the one shipped for the model. Default with "
                      "--state: the state's."),
    precision_option("Weights: 4bit (NF4, the default), 8bit, bf16 or fp32. Default with --state: the state's."),
    click.option("--device", metavar="DEVICE", help="cpu or cuda[:N] (default: cuda when available)."),
    threads_option("$OMP_NUM_THREADS, else every core; on a busy shared machine 1 can be much faster"),
)

reading_options = stack(
    click.option("--state", "-s", "state", metavar="STATE", type=click.Path(),
                 help="Start from this saved memory (default: an empty one)."),
    click.option("--save", metavar="STATE", type=click.Path(),
                 help="Save the memory here when done (atomically; default: not saved); on Ctrl-C, save what was "
                      "read so far."),
    click.option("--restart", is_flag=True,
                 help="Ignore an interrupted read recorded in --save: read everything again."),
    click.option("--encoding", metavar="CODEC", help="Encoding of the text inputs (default: UTF-8 or detected)."),
)

answer_options = stack(
    click.option("--max-new-tokens", "-n", type=click.IntRange(1, 4096), default=256, show_default=True,
                 help="Longest answer, in tokens."),
    click.option("--temperature", "-t", type=click.FloatRange(0.0), default=0.0, show_default=True,
                 help="0 = greedy (deterministic)."),
    click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
                 help="Nucleus sampling mass (with --temperature > 0)."),
    click.option("--seed", type=int, help="Sampling seed (with --temperature > 0; default: none, unseeded)."),
    click.option("--no-repeat", "no_repeat", type=click.IntRange(0), metavar="N", default=NO_REPEAT_NGRAM,
                 show_default=True,
                 help="The answer never repeats a run of N tokens, which stops the loops a small model falls "
                      "into (quoting the text is not affected); 0 = no limit."),
    click.option("--priming", type=click.IntRange(0), metavar="N",
                 help="Text tokens that stay in the live chunk before the question; the rest of the unread tail "
                      "goes through memory first. Default: what the adapter was trained with (its `priming` "
                      "setting; 0: the question alone meets the memory)."),
)

output_options = stack(
    json_option("Print one JSON object on stdout at the end (the answer, if any, and the figures) "
                "instead of text."),
    QUIET,
    VERBOSE,
)


@dataclass
class Opts:
    model: str | None = None
    adapter: str | None = None
    precision: str | None = None
    device: str | None = None
    threads: int | None = None
    state: str | None = None
    save: str | None = None
    restart: bool = False
    encoding: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    no_repeat: int = NO_REPEAT_NGRAM
    priming: int | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False


# --- commands ---------------------------------------------------------------------------------------

@cli.command(short_help="Read inputs, then write a summary to stdout.")
@click.argument("paths", nargs=-1, metavar="[PATH|-]...")
@model_options
@reading_options
@answer_options
@output_options
def summarize(paths: tuple[str, ...], **kw) -> None:
    """Read the inputs (text, .gz, .pdf, or - for stdin), then write a summary to stdout.

    With no PATH, a pipe on stdin is read (without --state).

    \b
    Examples:
      comet summarize samples/macbeth-act1.txt
      man bash | comet summarize
      comet summarize report.pdf --json | jq -r .answer
      comet summarize --state book.comet          # what was read before, no new input
    """
    from comet_core.prompt import SUMMARY_PROMPT

    o = Opts(**kw)
    run("summarize", summarize_inputs(paths, o.state), SUMMARY_PROMPT, o)


@cli.command(short_help="Read inputs, then answer a question about them.")
@click.argument("paths", nargs=-1, metavar="[PATH|-]...")
@click.argument("question")
@model_options
@reading_options
@answer_options
@output_options
def ask(paths: tuple[str, ...], question: str, **kw) -> None:
    """Read the inputs, then answer QUESTION about them (stdout). The question comes last.

    With no PATH, a pipe on stdin is read (without --state; with it, give - to add piped text).

    \b
    Examples:
      comet ask samples/app.log "Why did the nightly job fail?"
      zcat -f old.log.gz | comet ask "Which service logged the most errors?"
      comet ask --state book.comet "Who kills Duncan?"   # reads nothing new: seconds
    """
    o = Opts(**kw)
    inputs, question = ask_arguments(paths, question, o.state)
    run("ask", inputs, question, o)


# --- the slips ask and summarize catch before anything loads ------------------------------------------------

def stdin_is_piped() -> bool:
    """stdin is a pipe or a redirected file (not a terminal, not /dev/null): text to read."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _is_input(arg: str) -> bool:
    return arg == "-" or os.path.exists(arg)


def _command(*args: str) -> str:
    """A command line to show in a message, quoted for a shell (double quotes where they suffice)."""
    def quote(a: str) -> str:
        if a in ("PATH", "QUESTION") or shlex.quote(a) == a:
            return f'"{a}"' if a == "QUESTION" else a
        return f'"{a}"' if not any(c in a for c in '"$`\\!') else shlex.quote(a)

    return " ".join(quote(a) for a in args)


def ask_arguments(paths: tuple[str, ...], question: str, state: str | None) -> tuple[list[str], str]:
    """The inputs and question of `comet ask` (click puts the last argument in QUESTION), with the common
    slips turned into usage errors that show the right order: the question forgotten (`comet ask app.log`),
    the question first (`comet ask "why?" app.log`) or empty (`comet ask app.log ""`). With no PATH and no
    --state, a pipe on stdin is the input."""
    if _is_input(question):
        if paths and not _is_input(paths[0]):
            raise click.UsageError(f"the question comes last, after the inputs: "
                                   f"{_command('comet', 'ask', *paths[1:], question, paths[0])}")
        what = "- means stdin" if question == "-" else f"{question} is an input"
        raise click.UsageError(f"the question is missing ({what}): "
                               f"{_command('comet', 'ask', *paths, question, 'QUESTION')}")
    if not question.strip():
        raise click.UsageError("the question is empty: ask something after the inputs, e.g. "
                               "comet ask app.log \"Why did the nightly job fail?\"")
    if paths:
        return list(paths), question
    if state:
        return [], question
    if stdin_is_piped():
        return ["-"], question
    raise click.UsageError(f"nothing to read: give the inputs before the question "
                           f"({_command('comet', 'ask', 'PATH', question)}), pipe text in, or --state STATE")


def summarize_inputs(paths: tuple[str, ...], state: str | None) -> list[str]:
    """The inputs of `comet summarize`: a pipe on stdin when no PATH and no --state are given; an argument
    that is no file but reads like a question is a usage error pointing at `comet ask`."""
    for p in paths:
        looks_like_a_file = "/" in p or os.path.splitext(p.rstrip("?"))[1] != ""
        if not _is_input(p) and not looks_like_a_file and (p.rstrip().endswith("?") or len(p.split()) >= 3):
            raise click.UsageError(f"{p}: no such file; summarize takes no question (to ask one: "
                                   f"{_command('comet', 'ask', *([x for x in paths if x != p] or ['PATH']), p)})")
    if not paths and not state and stdin_is_piped():
        return ["-"]
    return list(paths)


@cli.command(short_help="Read inputs into memory and save it (--save STATE).")
@click.argument("paths", nargs=-1, required=True, metavar="PATH|-...")
@model_options
@reading_options
@click.option("--follow", "-f", is_flag=True,
              help="Like tail -F: read PATH to its end, then keep reading what is appended, across rotation "
                   "and truncation, until Ctrl-C (or --idle-exit). Checkpoints every 60 s by default.")
@click.option("--checkpoint-every", type=click.FloatRange(0), metavar="SECONDS",
              help="Save the state (atomically) at this rhythm while reading, so a crash loses at most that "
                   "much and the same command resumes from the checkpoint. 0: off. Default: 60 with --follow "
                   "or stdin, else off.")
@click.option("--idle-exit", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="With --follow: stop (as at the end of the input) after this long without new input "
                   "(default: never).")
@output_options
def read(paths: tuple[str, ...], follow: bool, checkpoint_every: float | None, idle_exit: float | None,
         **kw) -> None:
    """Read inputs into memory and save it (--save STATE).

    With --state, the new text is appended to that memory. Ctrl-C saves what was read so far; run the
    same command again to resume where it stopped (--restart reads from the beginning instead).

    --follow keeps reading a growing file (a log) and checkpoints the state, so that `comet ask --state`
    and `comet info` can be run on it meanwhile (they see the last checkpoint and say how old it is);
    with --json, one JSON line per checkpoint goes to stdout. After a crash, the same command resumes
    from the last checkpoint. stdin cannot be re-read: a checkpoint of a stdin read keeps what was read up
    to it, and running with --state STATE --save STATE again appends what then comes on stdin (what
    arrived between the last checkpoint and the crash is lost).

    \b
    Examples:
      comet read book.pdf --save book.comet
      tail -n 1000 app.log | comet read - --state app.comet --save app.comet
      comet read --follow /var/log/app.log --save app.comet      # Ctrl-C stops and saves
      journalctl -f | comet read - --save journal.comet --checkpoint-every 30
      comet read --follow build.log --idle-exit 300 --save build.comet --json
    """
    run("read", list(paths), None, Opts(**kw), ReadOpts(follow, checkpoint_every, idle_exit))


@cli.command(short_help="Show what a saved memory holds.")
@click.argument("state", type=click.Path())
@output_options
def info(state: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """What a saved memory holds: model, settings, sources read, tokens, size on disk, age.

    On a state that `comet read --follow` (or --checkpoint-every) keeps writing, this is its last
    checkpoint, with its age and whether its writer still runs.

    \b
    Examples:
      comet info book.comet
      comet info book.comet --json | jq .tokens_read
      watch -n 10 comet info app.comet        # a followed log: how far, how fresh
    """
    global _debug
    _debug = _debug or verbose  # info writes no progress or notes: -q has nothing to silence
    from comet_core.state_io import read_state_file

    f = read_state_file(state)  # one read: the version it describes, even if the file is replaced meanwhile
    meta, tensors, size, age = f.meta, f.tensors, f.nbytes, f.age
    memory_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k in ("global_state", "temp"))
    tokens, pending = meta.get("tokens", 0), meta.get("pending_tokens", 0)
    rec = meta.get("interrupted")
    out = {
        "state": state, "model": meta.get("model"), "model_spec": meta.get("model_spec"),
        "adapter": meta.get("adapter"), "precision": meta.get("precision"), "dtype": meta.get("dtype"),
        "settings": meta.get("settings"), "tokens_read": tokens + pending, "tokens_in_memory": tokens,
        "pending_tokens": pending, "chunks": meta.get("chunks", 0), "sources": meta.get("sources", []),
        "state_bytes": size, "memory_bytes": memory_bytes, "interrupted": rec is not None,
        "updated": meta.get("updated"), "age_seconds": None if age is None else round(age, 1),
        "checkpoint": meta.get("checkpoint"), "fingerprint": meta.get("fingerprint"), "version": meta.get("version"),
    }
    if as_json:
        _print_json(out)
        return
    s = out["settings"] or {}
    lines = [
        ("state", f"{state} ({fmt_bytes(size)} on disk, memory {fmt_bytes(memory_bytes)})"),
        ("model", f"{out['model']} ({out['precision']}, {out['dtype'] or 'no tensors yet'})"
                  + (f", adapter {out['adapter']}" if out["adapter"] else "")),
        ("settings", f"chunk {s.get('chunk_size')}, stride {s.get('stride')}, global slots {s.get('n_global')}, "
                     f"temp budget {s.get('budget')}"),
        ("read", f"{fmt_int(out['tokens_read'])} tokens ({out['chunks']} chunks in memory + "
                 f"{fmt_int(pending)} pending)"),
    ]
    srcs = out["sources"]
    shown = srcs if len(srcs) <= 8 else srcs[:2] + [None] + srcs[-4:]  # a log followed across many rotations
    for i, src in enumerate(shown):
        text = _describe_source(src) if src is not None else f"... {len(srcs) - 6} more"
        lines.append(("sources" if i == 0 else "", text))
    if not out["sources"]:
        lines.append(("sources", "none"))
    if out["checkpoint"]:
        every = out["checkpoint"].get("every")
        lines.append(("status", f"checkpoint of a read in progress ({_writer(meta)})"
                                + (f", one every {every:g} s" if isinstance(every, int | float) else "")))
    elif rec is not None:
        lines.append(("status", "interrupted: run the same command again to resume"))
    if out["updated"]:
        lines.append(("updated", f"{out['updated']} ({_ago(age)})"))
    for k, v in lines:
        click.echo(f"{k:>9}  {v}")


def _describe_source(src: dict) -> str:
    kind, unit, off, total = src.get("kind"), src.get("unit"), src.get("offset") or 0, src.get("total")
    size = f", {fmt_bytes(src['size'])}" if src.get("size") is not None else ""
    if src.get("done"):
        status = "done"
    else:
        where = f"page {off:,}" if unit == "pages" else f"byte {off:,}"
        pct = f" ({off / total:.0%})" if total else ""
        status = f"stopped at {where}{pct}"
    return f"{src.get('name')}  ({kind}{size})  {status}"


# --- the reading commands ---------------------------------------------------------------------------

CHECKPOINT_DEFAULT = 60.0  # seconds between checkpoints with --follow or stdin (and --save)


@dataclass
class ReadOpts:
    """The read command's own options: how a read keeps going."""

    follow: bool = False
    checkpoint_every: float | None = None  # None: CHECKPOINT_DEFAULT with --follow or stdin, else off
    idle_exit: float | None = None


class StopFlag:
    """SIGINT (Ctrl-C) or SIGTERM (`kill`, `timeout`, a service manager) during a read: ask the reader to
    stop after the current block of chunks; a second one quits at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, display: Display):
        self.display, self.set, self._old = display, False, {}
        self.quit_note = "nothing saved"  # what a second Ctrl-C leaves behind

    def __enter__(self) -> StopFlag:
        self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def _handler(self, signum, frame) -> None:
        if self.set:
            _show_cursor()
            os.write(2, f"\ncomet: interrupted ({self.quit_note})\n".encode())
            os._exit(EXIT_INTERRUPTED)
        self.set = True
        self.display.stopping()

    def __call__(self) -> bool:
        return self.set


def plan_start(keys: list[str], o: Opts, display: Display
               ) -> tuple[str | None, dict | None, str | None, StateFile | None]:
    """Which state file to start from, the interrupted read to resume (if any), the --state key, and the
    start file as read (a state_io.StateFile, None for an empty start): each file is read once, so a state
    that another process keeps replacing is used in the version that was checked."""
    from comet_core.state_io import StateError, read_state_file

    base = abspath(o.state) if o.state else None
    start = o.state
    if o.state and not os.path.exists(o.state) and o.save and abspath(o.save) == base:
        display.note(f"{o.state} does not exist yet: starting with an empty memory")
        start = None
    if o.save and not o.restart and os.path.isfile(o.save):
        try:
            saved = read_state_file(o.save)
        except StateError:
            saved = None
        rec = saved.meta.get("interrupted") if saved else None
        if rec and rec.get("inputs") == keys and rec.get("base") == base:
            display.note(f"resuming the interrupted read saved in {o.save} (--restart to start over)")
            return o.save, rec, base, saved
    return start, None, base, read_state_file(start) if start else None


def run(command: str, paths: list[str], question: str | None, o: Opts, ro: ReadOpts | None = None) -> None:
    global _debug
    _debug = _debug or o.verbose
    ro = ro or ReadOpts()
    if command == "read" and not o.save:
        raise click.UsageError("read needs --save STATE (where to keep the memory)")
    if not paths and not o.state:
        raise click.UsageError("nothing to read: give PATH(s) (or - for stdin), or --state STATE")
    if o.restart and not o.save:
        raise click.UsageError("--restart only makes sense with --save")
    if ro.follow and len(paths) != 1:
        raise click.UsageError("--follow follows one PATH (or -)")
    if ro.idle_exit and not ro.follow:
        raise click.UsageError("--idle-exit only makes sense with --follow")
    stats = Stats(command)
    display = make_display(stats, o.quiet, o.verbose)
    inputs = open_inputs(paths, o.encoding, follow=ro.follow)
    if o.save:
        check_writable(o.save, inputs)
    every = ro.checkpoint_every
    if every is None and (ro.follow or any(i.source.kind == "stdin" for i in inputs)):
        every = CHECKPOINT_DEFAULT
    stats.follow, stats.checkpoint_every = ro.follow, (every or None) if o.save else None

    from comet_core.reader import Interrupted
    from comet_core.state_io import load_state, save_state

    start_file, resume, base, start = plan_start([i.key for i in inputs], o, display)
    start_meta = start.meta if start else {}
    rec = start_meta.get("interrupted")
    if start is not None and start_meta.get("checkpoint") and resume is None:
        display.note(f"{start_file} is a checkpoint of a read in progress ({_writer(start_meta)}), written "
                     f"{_ago(start.age)}: using what it held then")
    elif rec is not None and resume is None:
        display.warn(f"{start_file} holds an interrupted read; using what was read before the interruption")
    if o.precision and start_meta.get("precision") and o.precision != start_meta["precision"]:
        raise CometError(f"{start_file}: state was made at precision {start_meta['precision']}; use it at that "
                       f"precision (omit --precision)")
    spec = o.model or start_meta.get("model_spec")
    precision = o.precision or start_meta.get("precision") or "4bit"
    adapter = o.adapter or start_meta.get("adapter")
    stats.model = f"{start_meta.get('model') or spec or 'SmolLM2-135M-Instruct'} {precision}"

    display.start()
    try:
        display.phase("loading model")
        t_load = time.monotonic()
        engine = load_engine(spec, precision, o.device, adapter, display, o.threads)
        load_seconds = time.monotonic() - t_load
        stats.model = f"{engine.name} · {engine.precision} · {engine.device}"
        if start is not None:
            state, _ = load_state(start, engine.identity.expect())
        else:
            state = engine.empty_state()
        state = state.to(engine.model.device)
        flag = StopFlag(display)
        checkpoint = functools.partial(_checkpoint, engine=engine, o=o, ro=ro, every=every, display=display,
                                       flag=flag)
        job = ReadJob(engine, state, inputs, base, resume, display, stats, should_stop=flag, follow=ro.follow,
                      checkpoint_every=every if o.save else None, on_checkpoint=checkpoint, idle_exit=ro.idle_exit)
        stats.update(0, state.chunks, state.nbytes())
        stats.start_reading(job.estimate(), len(inputs))
        if ro.follow:
            stats.phase = "following"
        with flag:
            try:
                job.run()
            except Interrupted:
                display.stop()
                _stopped(job, engine, o, ro)
        stats.end_reading()
        state = job.state
        saved_bytes = None
        if o.save:
            saved_bytes = save_state(o.save, state, _meta(engine))
        if flag.set and question is not None:  # Ctrl-C just as the read completed: do not answer
            display.stop()
            _err("interrupted" + (f" (the read was complete: saved to {o.save})" if o.save else ""))
            raise click.exceptions.Exit(EXIT_INTERRUPTED)
        answer = None
        answer_seconds = 0.0
        if question is not None:
            answer, answer_seconds = _answer(engine, state, question, o, display, stats)
    finally:
        display.stop()

    state_bytes = saved_bytes if saved_bytes is not None else _state_file_size(state, engine)
    n_in = len(inputs)
    rate = f" ({fmt_int(stats.rate_avg)} tok/s)" if stats.tokens_run else ""
    summary = (f"read {fmt_int(stats.tokens)} tokens from {n_in} input{'s' if n_in != 1 else ''} in "
               f"{stats.read_seconds:.1f}s{rate}, {state.chunks} chunks in memory")
    if answer is not None:
        summary += f"; answer {stats.answer_tokens} tokens at {stats.answer_rate:.1f} tok/s"
    summary += f"; peak RSS {fmt_bytes(peak_rss_bytes())}; state {fmt_bytes(state_bytes)}"
    if o.save:
        summary += f" saved to {o.save}"
    summary += f"; {fmt_duration(time.monotonic() - stats.t0)} total"
    display.done(summary)
    if o.as_json:
        out = {"command": command}
        if command == "ask":
            out["question"] = question
        if question is not None:
            out["answer"] = answer
        out.update({
            "model": engine.name, "precision": engine.precision, "device": engine.device,
            "trained_memory": engine.trained, "inputs": [i.arg for i in inputs],
            "tokens_read": stats.tokens, "tokens_total": state.tokens + len(state.pending_ids),
            "chunks": state.chunks, "pending_tokens": len(state.pending_ids),
            "tokens_per_s": round(stats.rate_avg, 1),
            "answer_tokens": stats.answer_tokens if question is not None else None,
            "answer_tokens_per_s": round(stats.answer_rate, 2) if question is not None else None,
            "peak_rss_mb": round(peak_rss_bytes() / (1 << 20), 1), "state_bytes": state_bytes,
            "saved": o.save, "resumed": resume is not None, "seconds": round(time.monotonic() - stats.t0, 2),
            "load_seconds": round(load_seconds, 2), "read_seconds": round(stats.read_seconds, 2),
            "answer_seconds": round(answer_seconds, 2), "sources": state.sources,
        })
        if stats.checkpoint_every:
            out["checkpoints"] = job.checkpoints
        if question is None:
            for k in ("answer_tokens", "answer_tokens_per_s", "answer_seconds"):
                out.pop(k)
        _print_json(out)


def _meta(engine, interrupted: dict | None = None, checkpoint: dict | None = None) -> dict:
    meta = dict(engine.identity.meta(), updated=datetime.now(UTC).isoformat(timespec="seconds"))
    if interrupted is not None:
        meta["interrupted"] = interrupted
    if checkpoint is not None:
        meta["checkpoint"] = checkpoint
    return meta


def _checkpoint(job: ReadJob, *, engine, o: Opts, ro: ReadOpts, every: float, display: Display,
                flag: StopFlag) -> None:
    """Save a checkpoint of a read in progress (ReadJob calls this at consistent points); a failed one is
    a warning (the next is tried on time), the read goes on."""
    from comet_core.state_io import StateError, save_state

    mark = {"n": job.checkpoints, "every": every, "follow": ro.follow, "pid": os.getpid(),
            "host": socket.gethostname()}
    state = job.state
    try:
        nbytes = save_state(o.save, state, _meta(engine, job.record(), mark))
    except StateError as e:
        display.warn(f"checkpoint failed ({e}); trying again in {every:g} s")
        return
    job.stats.checkpointed(nbytes)
    flag.quit_note = f"{o.save} holds checkpoint #{job.checkpoints}" + (
        "; the same command resumes from it" if job.record() is not None else "")
    n = state.tokens + len(state.pending_ids)
    display.checkpoint(f"checkpoint #{job.checkpoints}: {fmt_int(n)} tokens, {job.stopped_at()} -> {o.save}")
    if o.as_json and ro.follow:
        _print_json(_checkpoint_json(job, state, nbytes, o))


def _checkpoint_json(job: ReadJob, state, nbytes: int, o: Opts, stopped: bool = False) -> dict:
    """One line of `read --follow --json`: a checkpoint (or, stopped, the save on Ctrl-C)."""
    s = job.stats
    return {"checkpoint": job.checkpoints, "stopped": stopped, "saved": o.save,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"), "tokens_read": s.tokens,
            "tokens_total": state.tokens + len(state.pending_ids), "chunks": state.chunks,
            "pending_tokens": len(state.pending_ids), "tokens_per_s_now": round(s.rate_now, 1),
            "input_age_s": None if s.input_age is None else round(s.input_age, 1), "state_bytes": nbytes,
            "rss_mb": round(s.sample_rss() / (1 << 20), 1), "seconds": round(time.monotonic() - s.t0, 2),
            "sources": state.sources}


def _writer(meta: dict) -> str:
    """Who writes the checkpoints of a state: 'comet read --follow, pid 123 (running)' and the like."""
    mark = meta.get("checkpoint") or {}
    what = "comet read --follow" if mark.get("follow") else "comet read"
    pid, host = mark.get("pid"), mark.get("host")
    if not isinstance(pid, int):
        return what
    if host != socket.gethostname():
        return f"{what}, pid {pid} on {host}"
    try:
        os.kill(pid, 0)
        alive = "running"
    except ProcessLookupError:
        alive = "not running: the same command resumes it"
    except OSError:  # EPERM: it exists, as another user
        alive = "running"
    return f"{what}, pid {pid}, {alive}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{fmt_duration(seconds)} ago"


def _state_file_size(state, engine) -> int:
    from comet_core.state_io import state_to_bytes

    return len(state_to_bytes(state.to("cpu"), _meta(engine)))


def _stopped(job: ReadJob, engine, o: Opts, ro: ReadOpts | None = None) -> None:
    """Ctrl-C during a read: save what was read (with --save), say how to resume, exit 130."""
    from comet_core.state_io import save_state

    state = job.state
    n = state.tokens + len(state.pending_ids)
    if not o.save:
        _err(f"interrupted at {job.stopped_at()} (nothing saved: use --save STATE to keep a long read)")
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    rec = job.record()
    nbytes = save_state(o.save, state, _meta(engine, rec))
    if ro is not None and ro.follow:
        if o.as_json:
            _print_json(_checkpoint_json(job, state, nbytes, o, stopped=True))
        _err(f"stopped following {job.stopped_at()}: saved {fmt_int(n)} tokens to {o.save}"
             + ("; run the same command to go on from there" if rec is not None else ""))
    elif rec is None:
        _err(f"interrupted: saved {fmt_int(n)} tokens to {o.save} (stopped in stdin, which cannot be resumed: "
             "what was read is kept)")
    else:
        _err(f"interrupted at {job.stopped_at()}: saved {fmt_int(n)} tokens to {o.save}; "
             "run the same command to resume")
    raise click.exceptions.Exit(EXIT_INTERRUPTED)


def _answer(engine, state, question: str, o: Opts, display: Display, stats: Stats) -> tuple[str, float]:
    stdout_shared = isinstance(display, LiveDisplay) and sys.stdout.isatty()
    display.answer_begin(stdout_shared)
    t0 = time.monotonic()
    parts: list[str] = []
    out = sys.stdout
    for text, n in engine.answer_stream(state, question, max_new_tokens=o.max_new_tokens,
                                        temperature=o.temperature, top_p=o.top_p, seed=o.seed, priming=o.priming,
                                        no_repeat_ngram=o.no_repeat):
        display.answer_token(text, n)
        if text:
            parts.append(text)
            if not o.as_json:
                out.write(text)
                out.flush()
    if not o.as_json:
        out.write("\n")
        out.flush()
    return "".join(parts), time.monotonic() - t0


def _print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main() -> None:
    cli(prog_name="comet")


if __name__ == "__main__":
    main()
