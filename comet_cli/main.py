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
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime

import click

from comet_core import __version__
from comet_core.config import PRECISIONS
from comet_core.errors import CometError

from .live import Display, LiveDisplay, Stats, fmt_bytes, fmt_duration, fmt_int, make_display, peak_rss_bytes
from .session import ReadJob, abspath, check_writable, load_engine, open_inputs

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
      comet summarize book.pdf
      comet ask app.log "Why did the nightly job fail?"
      comet read book.txt --save book.comet        # read once ...
      comet ask --state book.comet "Who is Banquo?" # ... ask many times, in seconds
      tail -n 1000 app.log | comet read - --state app.comet --save app.comet
      comet info book.comet

    Results go to stdout, progress and errors to stderr. Exit status: 0 ok, 1 error, 2 usage error,
    130 interrupted (with --save, the state so far is saved: run the same command again to resume).
    """


# --- options ----------------------------------------------------------------------------------------

def model_options(f):
    @click.option("--model", "-m", metavar="MODEL",
                  help="'smollm2' (default: SmolLM2-135M-Instruct, shipped offline), a local Hugging Face "
                       "model folder or a .gguf file. Default with --state: the state's model.")
    @click.option("--adapter", metavar="PATH", type=click.Path(dir_okay=False),
                  help="CoMeT adapter (.safetensors) to use instead of the one shipped for the model.")
    @click.option("--precision", "-p", type=click.Choice(PRECISIONS),
                  help="Weights: 4bit (NF4, the default), 8bit, bf16 or fp32. Default with --state: the state's.")
    @click.option("--device", metavar="DEVICE", help="cpu or cuda[:N] (default: cuda when available).")
    @click.option("--threads", type=click.IntRange(1), metavar="N",
                  help="CPU threads (default: $OMP_NUM_THREADS, else every core; on a busy shared machine "
                       "1 can be much faster).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def reading_options(f):
    @click.option("--state", "-s", "state", metavar="STATE", type=click.Path(),
                  help="Start from this saved memory instead of an empty one.")
    @click.option("--save", metavar="STATE", type=click.Path(),
                  help="Save the memory here when done (atomically); on Ctrl-C, save what was read so far.")
    @click.option("--restart", is_flag=True,
                  help="Ignore an interrupted read recorded in --save: read everything again.")
    @click.option("--encoding", metavar="CODEC",
                  help="Encoding of the text inputs (default: UTF-8 or detected).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def answer_options(f):
    @click.option("--max-new-tokens", "-n", type=click.IntRange(1, 4096), default=256, show_default=True,
                  help="Longest answer, in tokens.")
    @click.option("--temperature", "-t", type=click.FloatRange(0.0), default=0.0, show_default=True,
                  help="0 = greedy (deterministic).")
    @click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
                  help="Nucleus sampling mass (with --temperature > 0).")
    @click.option("--seed", type=int, help="Sampling seed (with --temperature > 0).")
    @click.option("--priming", type=click.IntRange(0), metavar="N",
                  help="Text tokens that stay in the live chunk before the question; the rest of the unread "
                       "tail goes through memory first. Default: what the adapter was trained with (0 for "
                       "the shipped one: the question alone meets the memory).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def output_options(f):
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (figures included).")
    @click.option("--quiet", "-q", is_flag=True, help="No progress, notes or warnings on stderr (errors only).")
    @click.option("--verbose", "-v", is_flag=True, help="More progress lines; tracebacks for internal errors.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


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

    \b
      comet summarize samples/macbeth-act1.txt
      comet summarize report.pdf --json | jq -r .answer
      comet summarize --state book.comet          # what was read before, no new input
    """
    from comet_core.prompt import SUMMARY_PROMPT

    run("summarize", list(paths), SUMMARY_PROMPT, Opts(**kw))


@cli.command(short_help="Read inputs, then answer a question about them.")
@click.argument("paths", nargs=-1, metavar="[PATH|-]...")
@click.argument("question")
@model_options
@reading_options
@answer_options
@output_options
def ask(paths: tuple[str, ...], question: str, **kw) -> None:
    """Read the inputs, then answer QUESTION about them (stdout).

    An empty QUESTION ("") continues the text instead.

    \b
      comet ask samples/app.log "Why did the nightly job fail?"
      zcat -f old.log.gz | comet ask - "Which service logged the most errors?"
      comet ask --state book.comet "Who kills Duncan?"   # reads nothing new: seconds
    """
    run("ask", list(paths), question, Opts(**kw))


@cli.command(short_help="Read inputs into memory and save it (--save STATE).")
@click.argument("paths", nargs=-1, required=True, metavar="PATH|-...")
@model_options
@reading_options
@output_options
def read(paths: tuple[str, ...], **kw) -> None:
    """Read inputs into memory and save it (--save STATE).

    With --state, the new text is appended to that memory. Ctrl-C saves what was read so far; run the
    same command again to resume where it stopped (--restart reads from the beginning instead).

    \b
      comet read book.pdf --save book.comet
      tail -n 1000 app.log | comet read - --state app.comet --save app.comet
    """
    run("read", list(paths), None, Opts(**kw))


@cli.command(short_help="Show what a saved memory holds.")
@click.argument("state", type=click.Path())
@output_options
def info(state: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """What a saved memory holds: model, settings, sources read, tokens, size on disk."""
    from comet_core.state_io import read_meta

    meta, tensors = read_meta(state)
    size = os.path.getsize(state)
    memory_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k in ("global_state", "temp"))
    tokens, pending = meta.get("tokens", 0), meta.get("pending_tokens", 0)
    rec = meta.get("interrupted")
    out = {
        "state": state, "model": meta.get("model"), "model_spec": meta.get("model_spec"),
        "adapter": meta.get("adapter"), "precision": meta.get("precision"), "dtype": meta.get("dtype"),
        "settings": meta.get("settings"), "tokens_read": tokens + pending, "tokens_in_memory": tokens,
        "pending_tokens": pending, "chunks": meta.get("chunks", 0), "sources": meta.get("sources", []),
        "state_bytes": size, "memory_bytes": memory_bytes, "interrupted": rec is not None,
        "updated": meta.get("updated"), "fingerprint": meta.get("fingerprint"), "version": meta.get("version"),
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
    for i, src in enumerate(out["sources"]):
        lines.append(("sources" if i == 0 else "", _describe_source(src)))
    if not out["sources"]:
        lines.append(("sources", "none"))
    if rec is not None:
        lines.append(("status", "interrupted: run the same command again to resume"))
    if out["updated"]:
        lines.append(("updated", out["updated"]))
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

class StopFlag:
    """SIGINT during a read: ask the reader to stop after the current chunk; a second one quits at once."""

    def __init__(self, display: Display):
        self.display, self.set, self._old = display, False, None

    def __enter__(self) -> StopFlag:
        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._old)

    def _handler(self, signum, frame) -> None:
        if self.set:
            _show_cursor()
            os.write(2, b"\ncomet: interrupted (nothing saved)\n")
            os._exit(EXIT_INTERRUPTED)
        self.set = True
        self.display.stopping()

    def __call__(self) -> bool:
        return self.set


def plan_start(keys: list[str], o: Opts, display: Display) -> tuple[str | None, dict | None, str | None]:
    """Which state file to start from, the interrupted read to resume (if any), and the --state key."""
    from comet_core.state_io import StateError, read_meta

    base = abspath(o.state) if o.state else None
    start = o.state
    if o.state and not os.path.exists(o.state) and o.save and abspath(o.save) == base:
        display.note(f"{o.state} does not exist yet: starting with an empty memory")
        start = None
    if o.save and not o.restart and os.path.isfile(o.save):
        try:
            rec = read_meta(o.save)[0].get("interrupted")
        except StateError:
            rec = None
        if rec and rec.get("inputs") == keys and rec.get("base") == base:
            display.note(f"resuming the interrupted read saved in {o.save} (--restart to start over)")
            return o.save, rec, base
    return start, None, base


def run(command: str, paths: list[str], question: str | None, o: Opts) -> None:
    global _debug
    _debug = _debug or o.verbose
    if command == "read" and not o.save:
        raise click.UsageError("read needs --save STATE (where to keep the memory)")
    if not paths and not o.state:
        raise click.UsageError("nothing to read: give PATH(s) (or - for stdin), or --state STATE")
    if o.restart and not o.save:
        raise click.UsageError("--restart only makes sense with --save")
    stats = Stats(command)
    display = make_display(stats, o.quiet, o.verbose)
    inputs = open_inputs(paths, o.encoding)
    if o.save:
        check_writable(o.save, inputs)

    from comet_core.reader import Interrupted
    from comet_core.state_io import load_state, read_meta, save_state

    start_file, resume, base = plan_start([i.key for i in inputs], o, display)
    start_meta = read_meta(start_file)[0] if start_file else {}
    rec = start_meta.get("interrupted")
    if rec is not None and resume is None:
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
        if start_file:
            state, _ = load_state(start_file, engine.identity.expect())
        else:
            state = engine.empty_state()
        state = state.to(engine.model.device)
        flag = StopFlag(display)
        job = ReadJob(engine, state, inputs, base, resume, display, stats, should_stop=flag)
        stats.update(0, state.chunks, state.nbytes())
        stats.start_reading(job.estimate(), len(inputs))
        with flag:
            try:
                job.run()
            except Interrupted:
                display.stop()
                _stopped(job, engine, o)
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
        if question is None:
            for k in ("answer_tokens", "answer_tokens_per_s", "answer_seconds"):
                out.pop(k)
        _print_json(out)


def _meta(engine, interrupted: dict | None = None) -> dict:
    meta = dict(engine.identity.meta(), updated=datetime.now(UTC).isoformat(timespec="seconds"))
    if interrupted is not None:
        meta["interrupted"] = interrupted
    return meta


def _state_file_size(state, engine) -> int:
    from comet_core.state_io import state_to_bytes

    return len(state_to_bytes(state.to("cpu"), _meta(engine)))


def _stopped(job: ReadJob, engine, o: Opts) -> None:
    """Ctrl-C during a read: save what was read (with --save), say how to resume, exit 130."""
    from comet_core.state_io import save_state

    state = job.state
    n = state.tokens + len(state.pending_ids)
    if not o.save:
        _err(f"interrupted at {job.stopped_at()} (nothing saved: use --save STATE to keep a long read)")
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    rec = job.record()
    save_state(o.save, state, _meta(engine, rec))
    if rec is None:
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
                                        temperature=o.temperature, top_p=o.top_p, seed=o.seed, priming=o.priming):
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
