"""End-to-end tests of the `comet` command: the real console script in a subprocess, on small real inputs.

Most tests use a tiny random llama (tests/tiny.py) at fp32 with an untrained memory: what is checked is
the tool (inputs, states, resume, errors, output formats), not the answers. Tests marked `real` use the
shipped default model (SmolLM2-135M-Instruct, 4-bit); CI runs them too.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
WORDS = ("call me ishmael some years ago never mind how long precisely having little or no money in my purse "
         "and nothing particular to interest me on shore the pass key is 12345 remember it service restarted "
         "nightly job failed disk full ERROR WARN INFO").split()
STATE_ERROR_EXIT, OK, INTERRUPTED, PIPE, USAGE = 1, 0, 130, 141, 2


def comet_cmd() -> list[str]:
    exe = shutil.which("comet")
    return [exe] if exe else [sys.executable, "-m", "comet_cli"]


def words(n_lines: int, seed: int, per_line: int = 9) -> list[str]:
    import random

    r = random.Random(seed)
    return [f"{i:04d} " + " ".join(r.choice(WORDS) for _ in range(per_line)) for i in range(n_lines)]


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A minimal valid PDF: one page per list of text lines (Helvetica, uncompressed content streams)."""
    objs: list[bytes] = []

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    pages_id = len(objs) + 1 + 2 * len(pages)
    kids = []
    for lines in pages:
        ops = ["BT /F1 9 Tf 11 TL 40 780 Td"]
        for line in lines:
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({esc}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                        b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (pages_id, content, font)))
    add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, catalog, xref)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, OMP_NUM_THREADS="1", COMET_CACHE=str(cache), COLUMNS="100", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    f = {"txt": d / "notes.txt", "gz": d / "log.txt.gz", "pdf": d / "book.pdf", "more": d / "more.txt"}
    f["txt"].write_text("\n".join(words(120, 1)) + "\n", encoding="utf-8")
    with gzip.open(f["gz"], "wt", encoding="utf-8") as g:
        g.write("\n".join(words(60, 2)) + "\n")
    make_pdf(f["pdf"], [words(30, 10 + p) for p in range(4)])
    f["more"].write_text("\n".join(words(40, 3)) + "\n", encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def saved(tmp_path_factory, env, tiny, files) -> Path:
    """A state read from files["more"] by the tiny model (read-only for the tests that use it)."""
    state = tmp_path_factory.mktemp("states") / "more.comet"
    p = run(["read", files["more"], "--save", state, "-q", *tiny_args(tiny)], env)
    assert p.returncode == 0, p.stderr.decode()
    return state


def run(args: list, env: dict, input: bytes | None = None, cwd: Path | None = None, timeout: float = 900
        ) -> subprocess.CompletedProcess:
    return subprocess.run(comet_cmd() + [str(a) for a in args], input=input, capture_output=True, env=env,
                          cwd=cwd, timeout=timeout)


def tiny_args(tiny: Path) -> list:
    return ["--model", tiny, "--precision", "fp32"]


def one_line_error(p: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, nothing on stdout, one "comet: error:" line holding every fragment, no traceback."""
    err = p.stderr.decode()
    assert p.returncode == code, (p.returncode, err)
    assert "Traceback" not in err, err
    assert p.stdout == b""
    lines = [x for x in err.splitlines() if x.startswith("comet: error:")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def early_error(p: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """A one-line error found before any model was loaded (inputs are checked first: fast)."""
    line = one_line_error(p, code, *fragments)
    assert "comet: loading" not in p.stderr.decode()
    return line


def meta_of(path: Path) -> dict:
    from comet_core.state_io import read_meta

    return read_meta(path)[0]


def tensors_of(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# --- no model needed: fast failures ------------------------------------------------------------------

def test_help_and_version(env):
    p = run(["--help"], env)
    assert p.returncode == 0 and b"summarize" in p.stdout and b"comet ask" in p.stdout
    for cmd in ("summarize", "ask", "read", "info"):
        p = run([cmd, "--help"], env)
        assert p.returncode == 0 and b"--json" in p.stdout, cmd
    assert run(["--version"], env).stdout.startswith(b"comet, version")


def test_input_errors_are_one_line_and_fast(tmp_path, env, tiny, files):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n \t\n")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (tmp_path / "adir").mkdir()
    a = tiny_args(tiny)
    early_error(run(["summarize", tmp_path / "missing.txt", *a], env), 1, "missing.txt", "no such file")
    early_error(run(["summarize", tmp_path / "adir", *a], env), 1, "is a directory")
    early_error(run(["ask", tmp_path / "empty.txt", "q", *a], env), 1, "empty.txt", "empty")
    early_error(run(["ask", tmp_path / "blank.txt", "q", *a], env), 1, "empty")
    early_error(run(["ask", "-", "q", *a], env, input=b""), 1, "stdin", "empty")
    early_error(run(["summarize", tmp_path / "noise.bin", *a], env), 1, "binary")
    early_error(run(["summarize", tmp_path / "image.png", *a], env), 1, "binary", "PNG")
    early_error(run(["summarize", files["txt"], "-", "-", *a], env), 1, "stdin")
    early_error(run(["read", files["txt"], "--save", tmp_path / "no" / "dir" / "s.comet", *a], env), 1,
                   "cannot write", "does not exist")
    early_error(run(["read", files["txt"], "--save", tmp_path / "adir", *a], env), 1, "cannot write",
                   "directory")
    early_error(run(["read", files["txt"], "--save", files["txt"], *a], env), 1, "one of the inputs")
    early_error(run(["read", files["txt"], "--save", files["more"], *a], env), 1, "not a comet state")
    if os.geteuid() != 0:  # root reads anything
        secret = tmp_path / "secret.txt"
        secret.write_text("hello")
        secret.chmod(0)
        early_error(run(["summarize", secret, *a], env), 1, "permission denied")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        early_error(run(["read", files["txt"], "--save", ro / "s.comet", *a], env), 1, "permission denied")
    # encrypted and broken PDFs are refused when opened, before the model loads
    from pypdf import PdfWriter

    w = PdfWriter(clone_from=str(files["pdf"]))
    w.encrypt("secret")
    w.write(str(tmp_path / "locked.pdf"))
    early_error(run(["summarize", tmp_path / "locked.pdf", *a], env), 1, "encrypted")
    (tmp_path / "broken.pdf").write_bytes(files["pdf"].read_bytes()[:400])
    early_error(run(["summarize", tmp_path / "broken.pdf", *a], env), 1, "broken.pdf", "cannot read PDF")
    # usage errors: exit 2
    for args in (["read", files["txt"], *a], ["ask", *a], ["ask", "question only", *a], ["read", *a]):
        p = run(args, env)
        assert p.returncode == USAGE and b"Usage:" in p.stderr and b"Traceback" not in p.stderr, args


def test_bad_state_files(tmp_path, env, tiny, files):
    a = tiny_args(tiny)
    one_line_error(run(["info", tmp_path / "nope.comet"], env), 1, "no such state file")
    one_line_error(run(["ask", "--state", tmp_path / "nope.comet", "q", *a], env), 1, "no such state file")
    one_line_error(run(["info", files["txt"]], env), 1, "notes.txt", "state file")
    one_line_error(run(["ask", "--state", tmp_path, "q", *a], env), 1, "directory")


# --- the tiny model ------------------------------------------------------------------------------------

def test_ask_several_inputs_json(env, tiny, files):
    """text + gz + pdf + stdin in one call; --json prints exactly one object with the documented fields."""
    stdin = "\n".join(words(30, 4)).encode()
    p = run(["ask", files["txt"], files["gz"], files["pdf"], "-", "What is the pass key?", "--json", "-n", "5",
             *tiny_args(tiny)], env, input=stdin)
    assert p.returncode == OK, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key, typ in (("answer", str), ("tokens_read", int), ("chunks", int), ("tokens_per_s", (int, float)),
                     ("peak_rss_mb", (int, float)), ("state_bytes", int), ("seconds", (int, float))):
        assert isinstance(out[key], typ), key
    assert out["tokens_read"] > 1000 and out["chunks"] >= 2 and out["state_bytes"] > 1000
    assert 0 < out["answer_tokens"] <= 5 and out["question"] == "What is the pass key?"
    assert out["peak_rss_mb"] > 50 and out["tokens_per_s"] > 0 and out["trained_memory"] is False
    assert [s["kind"] for s in out["sources"]] == ["text", "gz", "pdf", "stdin"]
    assert all(s["done"] for s in out["sources"])
    assert out["sources"][2]["offset"] == 4 and out["sources"][2]["unit"] == "pages"
    assert out["tokens_total"] == out["tokens_read"]
    err = p.stderr.decode()
    assert "memory is untrained" in err and "Traceback" not in err


def test_summarize_plain_output_and_pdf_without_text(tmp_path, env, tiny, files):
    p = run(["summarize", files["more"], "-n", "4", *tiny_args(tiny)], env)
    assert p.returncode == OK, p.stderr.decode()
    err = p.stderr.decode()
    # stderr redirected: plain lines, no terminal control codes; the summary line has the figures
    assert "\x1b[" not in err and "comet: read " in err and "tok/s" in err and "peak RSS" in err
    assert not p.stdout.startswith(b"comet") and p.stdout.endswith(b"\n")
    blank = make_pdf(tmp_path / "scan.pdf", [[], []])
    one_line_error(run(["summarize", blank, "-q", *tiny_args(tiny)], env), 1, "no extractable text")


def test_no_repeat_reaches_the_answer(env, tiny, saved):
    """--no-repeat 0 lets the tiny random model loop; the default breaks the loop: other answers."""
    def answer(*opt: str) -> str:
        p = run(["ask", "--state", saved, "What is it?", "-n", "40", "--json", "-q", *opt, *tiny_args(tiny)], env)
        assert p.returncode == OK, p.stderr.decode()
        return json.loads(p.stdout)["answer"]

    free, default = answer("--no-repeat", "0"), answer()
    assert free != default and default == answer("--no-repeat", "4")


def read_pty(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        sink.append(data)


def test_read_save_info_ask_state_and_append(tmp_path, env, tiny, files):
    state = tmp_path / "notes.comet"
    a = tiny_args(tiny)
    # --state X --save X with X absent: created (the log-append idiom works from the first run)
    p = run(["read", files["txt"], "--state", state, "--save", state, "--json", *a], env)
    assert p.returncode == OK, p.stderr.decode()
    out = json.loads(p.stdout)
    assert "answer" not in out and out["saved"] == str(state) and out["state_bytes"] == state.stat().st_size
    assert "does not exist yet" in p.stderr.decode()
    info = json.loads(run(["info", state, "--json"], env).stdout)
    assert info["tokens_read"] == out["tokens_read"] == out["tokens_total"] > 0
    assert info["model"] == str(tiny) and info["precision"] == "fp32" and info["interrupted"] is False
    assert info["state_bytes"] == state.stat().st_size and info["sources"][0]["done"]
    text = run(["info", state], env).stdout.decode()
    assert "notes.txt" in text and "tokens" in text and "chunk 512" in text

    # ask from the saved state, no new input; stderr on a terminal: the rich live panel
    master, slave = pty.openpty()
    sink: list[bytes] = []
    proc = subprocess.Popen(comet_cmd() + ["ask", "--state", str(state), "what?", "-n", "3", "--json"],
                            stdout=subprocess.PIPE, stderr=slave, env=dict(env, TERM="xterm"))
    os.close(slave)
    reader = threading.Thread(target=read_pty, args=(master, sink), daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=900)
    reader.join(timeout=5)
    os.close(master)
    panel = b"".join(sink).decode(errors="replace")
    assert proc.returncode == OK, panel
    out = json.loads(stdout)  # model and precision came from the state
    assert out["tokens_read"] == 0 and out["tokens_total"] == info["tokens_read"] and out["model"] == str(tiny)
    assert "╭" in panel and "comet ask" in panel and "RSS" in panel and "state" in panel

    # append from stdin (like `tail -n 1000 app.log | comet read - --state app.comet --save app.comet`)
    more = files["more"].read_bytes()
    p = run(["read", "-", "--state", state, "--save", state, "--json", "-q"], env, input=more)
    assert p.returncode == OK and p.stderr == b"", p.stderr.decode()
    info2 = json.loads(run(["info", state, "--json"], env).stdout)
    assert info2["tokens_read"] == info["tokens_read"] + json.loads(p.stdout)["tokens_read"]
    assert [s["kind"] for s in info2["sources"]] == ["text", "stdin"]
    assert info2["sources"][1]["size"] == len(more) and info2["sources"][1]["done"]


def test_state_from_another_model_settings_or_precision_is_refused(tmp_path, env, tiny, saved):
    from comet_core.adapter import save_adapter
    from comet_core.config import CometConfig
    from comet_core.loading import load_model, model_fingerprint
    from comet_core.model import CometModel

    state = saved
    other = save_tiny(tmp_path / "other", seed=1)
    one_line_error(run(["ask", "--state", state, "q", "--model", other, "-q"], env), 1, "another model")
    # same weights and adapter tensors, other chunk size
    loaded = load_model(str(tiny), "fp32")
    m = CometModel.create(loaded.model, replace(CometConfig(), chunk_size=256))
    save_adapter(tmp_path / "c256.safetensors", m, model_fingerprint(loaded.model), "tiny")
    one_line_error(run(["ask", "--state", state, "q", "--adapter", tmp_path / "c256.safetensors", "-q"], env), 1,
                   "other memory settings", "chunk_size 512 vs 256")
    one_line_error(run(["ask", "--state", state, "q", "--precision", "bf16"], env), 1, "precision fp32")
    # corrupt and truncated states
    data = state.read_bytes()
    (tmp_path / "flip.comet").write_bytes(data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:])
    one_line_error(run(["ask", "--state", tmp_path / "flip.comet", "q"], env), 1, "corrupt")
    (tmp_path / "cut.comet").write_bytes(data[: len(data) // 2])
    one_line_error(run(["info", tmp_path / "cut.comet"], env), 1, "truncated")


def test_broken_pipe_exits_quietly(env, saved):
    proc = subprocess.Popen(comet_cmd() + ["summarize", "--state", str(saved), "-q", "-n", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `comet summarize book | head -c 0`
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == PIPE and err == b"", err.decode()


def interrupt_after(args: list, env: dict, ready, sig: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Run comet -v, send `sig` once `ready(lines so far)` is true, return the finished process."""
    proc = subprocess.Popen(comet_cmd() + [str(x) for x in args] + ["-v"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    lines = []
    for raw in proc.stderr:
        lines.append(raw.decode())
        if ready(lines):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(lines).encode() + err)


def test_ctrl_c_saves_and_rerun_resumes_to_the_same_state(tmp_path, env, tiny):
    text = tmp_path / "part1.txt"  # ~15k tokens, ~30 chunks: progress comes once per block of 4 chunks
    text.write_text("\n".join(words(600, 21)) + "\n")
    pdf = make_pdf(tmp_path / "part2.pdf", [words(80, 30 + p) for p in range(10)])
    a = tiny_args(tiny)
    full, part = tmp_path / "full.comet", tmp_path / "part.comet"
    p = run(["read", text, pdf, "--save", full, "-q", *a], env)
    assert p.returncode == OK, p.stderr.decode()

    def chunk_lines(lines):
        return sum("tok/s now" in x for x in lines)

    # 1st Ctrl-C: in the text file (a few chunks in)
    p = interrupt_after(["read", text, pdf, "--save", part, *a], env, lambda ls: chunk_lines(ls) >= 3)
    err = p.stderr.decode()
    assert p.returncode == INTERRUPTED, err
    assert "run the same command to resume" in err and "Traceback" not in err
    meta = meta_of(part)
    assert meta["interrupted"]["done"] == 0 and [s["done"] for s in meta["sources"]] == [False]
    assert 0 < meta["tokens"] < meta_of(full)["tokens"]

    # 2nd Ctrl-C: in the PDF, after some pages
    def in_pdf(lines):
        starts = [i for i, x in enumerate(lines) if "reading part2.pdf" in x or f"reading {pdf}" in x]
        return bool(starts) and chunk_lines(lines[starts[0]:]) >= 3

    p = interrupt_after(["read", text, pdf, "--save", part, *a], env, in_pdf)
    err = p.stderr.decode()
    assert p.returncode == INTERRUPTED and "resuming" in err, err
    meta = meta_of(part)
    assert meta["interrupted"]["done"] == 1 and [s["done"] for s in meta["sources"]] == [True, False]
    assert 0 < meta["sources"][1]["offset"] < 10 and meta["sources"][1]["unit"] == "pages"
    info = json.loads(run(["info", part, "--json"], env).stdout)
    assert info["interrupted"] is True and info["sources"][1]["offset"] == meta["sources"][1]["offset"]

    # rerun: finishes, identical to the uninterrupted read
    p = run(["read", text, pdf, "--save", part, "--json", *a], env)
    assert p.returncode == OK and json.loads(p.stdout)["resumed"] is True, p.stderr.decode()
    assert "resuming part2.pdf at page" in p.stderr.decode() or "resuming" in p.stderr.decode()
    m_full, m_part = meta_of(full), meta_of(part)
    for k in ("tokens", "chunks", "beacons", "pending_tokens", "sources", "fingerprint", "settings"):
        assert m_full[k] == m_part[k], k
    assert "interrupted" not in m_part
    t_full, t_part = tensors_of(full), tensors_of(part)
    assert t_full.keys() == t_part.keys()
    for k in t_full:
        assert t_full[k].equal(t_part[k]), k

    # a changed input is not resumed silently
    p = interrupt_after(["read", text, pdf, "--save", part, "--restart", *a], env, lambda ls: chunk_lines(ls) >= 2)
    assert p.returncode == INTERRUPTED
    text.write_text("changed\n" + text.read_text())
    one_line_error(run(["read", text, pdf, "--save", part, "-q", *a], env), 1, "changed since the interrupted read")


def test_sigterm_stops_a_read_like_ctrl_c(env, tiny, tmp_path):
    """`kill`, `timeout` or a service manager send SIGTERM: the read stops after the chunks in progress,
    saves where it is, and the same command resumes."""
    text = tmp_path / "long.txt"
    text.write_text("\n".join(words(600, 23)) + "\n")
    part = tmp_path / "part.comet"
    a = tiny_args(tiny)
    p = interrupt_after(["read", text, "--save", part, *a], env, lambda ls: sum("tok/s now" in x for x in ls) >= 2,
                        sig=signal.SIGTERM)
    err = p.stderr.decode()
    assert p.returncode == INTERRUPTED and "run the same command to resume" in err and "Traceback" not in err, err
    assert meta_of(part)["interrupted"]["done"] == 0
    p = run(["read", text, "--save", part, "--json", *a], env)
    assert p.returncode == OK and json.loads(p.stdout)["resumed"] is True, p.stderr.decode()


def test_ctrl_c_without_save(env, tiny, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(words(200, 5)) + "\n")
    p = interrupt_after(["summarize", big, *tiny_args(tiny)], env, lambda ls: any("tok/s now" in x for x in ls))
    assert p.returncode == INTERRUPTED and p.stdout == b""
    assert "nothing saved" in p.stderr.decode() and "Traceback" not in p.stderr.decode()


# --- the display, in-process ------------------------------------------------------------------------------

def test_live_panel_and_plain_line_render():
    import io

    from rich.console import Console

    from comet_cli.live import LiveDisplay, Stats, progress_line

    s = Stats("summarize", model="tiny · fp32 · cpu")
    s.start_reading(10_000, 2)
    s.source, s.source_index = "book.pdf", 1
    s.update(2_048, 4, 11_000_000)
    s.read_t0 -= 2.0
    line = progress_line(s)
    assert "2,048/~10,000 tokens (20%)" in line and "ETA" in line and "RSS" in line and "10.5 MiB" in line
    d = LiveDisplay(s)
    con = Console(file=io.StringIO(), width=100, force_terminal=True)
    con.print(d._render())
    text = con.file.getvalue()
    for frag in ("comet summarize", "book.pdf", "[1/2]", "2,048 / ~10,000", "ETA", "tok/s now", "chunks",
                 "RSS", "state 10.5 MiB"):
        assert frag in text, frag


# --- the real default model ------------------------------------------------------------------------------

@pytest.mark.real
def test_real_ask_sample_log():
    env = dict(os.environ, COLUMNS="100")
    p = run(["ask", SAMPLES / "app.log", "Why did the nightly job fail?", "--json", "-n", "40"], env, timeout=900)
    assert p.returncode == OK, p.stderr.decode()
    out = json.loads(p.stdout)
    assert out["answer"].strip() and out["precision"] == "4bit" and out["model"] == "SmolLM2-135M-Instruct"
    assert out["tokens_read"] > 3000 and out["chunks"] >= 5 and out["peak_rss_mb"] < 4000


@pytest.mark.real
def test_real_state_roundtrip_at_4bit(tmp_path):
    env = dict(os.environ, COLUMNS="100")
    state = tmp_path / "log.comet"
    head = b"".join(SAMPLES.joinpath("app.log").read_bytes().splitlines(keepends=True)[:30])
    p = run(["read", "-", "--save", state, "-q"], env, input=head, timeout=900)
    assert p.returncode == OK, p.stderr.decode()
    p = run(["summarize", "--state", state, "--json", "-n", "24", "-q"], env, timeout=900)
    assert p.returncode == OK, p.stderr.decode()
    out = json.loads(p.stdout)
    assert out["answer"].strip() and out["tokens_read"] == 0 and out["tokens_total"] > 500


def test_train_rejects_bad_tasks_and_lora_targets(env, tmp_path):
    for args, msg in ((["--lora-targets", "q_proj,foo"], "unknown LoRA targets ['foo']"),
                      (["--tasks", "passkey:1,bogus:1"], "unknown tasks ['bogus']"),
                      (["--tasks", "passkey"], "task:weight"),
                      (["--tasks", "passkey:0"], "positive sum"),
                      (["--in-memory", "1.5"], "--in-memory is a share in [0, 1]")):
        p = run(["train", "--out", tmp_path / "run", *args], env)
        assert p.returncode == 2 and msg in p.stderr.decode() and "Traceback" not in p.stderr.decode(), args
    assert not (tmp_path / "run").exists()


# --- the slips of a first-time user, and commands that agree -------------------------------------------

def run_no_stdin(args: list, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`run` with stdin at /dev/null: neither a terminal nor a pipe, whatever runs the tests."""
    return subprocess.run(comet_cmd() + [str(a) for a in args], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env, cwd=cwd, timeout=120)


def usage_error(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2: one "comet: error:" line holding every fragment, then the Usage line; nothing loaded."""
    err = p.stderr.decode()
    assert p.returncode == USAGE and p.stdout == b"", (p.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("comet: error: ") and lines[1].startswith("Usage: "), err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def test_ask_slips_say_what_is_wrong_and_show_the_right_order(env, files, tmp_path):
    log = files["txt"]
    usage_error(run_no_stdin(["ask", log], env), "the question is missing", f'comet ask {log} "QUESTION"')
    usage_error(run_no_stdin(["ask", "-"], env), "the question is missing", 'comet ask - "QUESTION"')
    usage_error(run_no_stdin(["ask", "why did the job fail?", log], env),
                "the question comes last", f'comet ask {log} "why did the job fail?"')
    usage_error(run_no_stdin(["ask", "why?", log, files["more"]], env),
                "the question comes last", f'comet ask {log} {files["more"]} "why?"')
    usage_error(run_no_stdin(["ask", log, files["more"]], env), "the question is missing",
                f'comet ask {log} {files["more"]} "QUESTION"')
    for empty in ("", "   "):
        usage_error(run_no_stdin(["ask", log, empty], env), "the question is empty")
    usage_error(run_no_stdin(["ask", "why?"], env), "nothing to read", "pipe text in")
    usage_error(run_no_stdin(["summarize", "why did the job fail?"], env), "summarize takes no question",
                'comet ask PATH "why did the job fail?"')


def test_ask_and_summarize_read_a_pipe_without_dash(env, tiny, saved):
    text = ("\n".join(words(40, 7)) + "\n").encode()
    for args in (["ask", "What is the pass key?"], ["summarize"]):
        p = run([*args, "-n", "3", "--json", "-q", *tiny_args(tiny)], env, input=text)
        assert p.returncode == OK, p.stderr.decode()
        out = json.loads(p.stdout)
        assert out["inputs"] == ["-"] and out["tokens_read"] > 100, out
    # with --state and no PATH the state is asked as it is: the pipe is not read (give - to append it)
    p = run(["ask", "--state", saved, "What is the pass key?", "-n", "3", "--json", "-q"], env, input=text)
    assert p.returncode == OK, p.stderr.decode()
    assert json.loads(p.stdout)["tokens_read"] == 0


def test_every_command_has_examples_defaults_and_help_on_every_option(env):
    import click

    from comet_cli.main import cli

    ctx = click.Context(cli)
    for name in ("summarize", "ask", "read", "info", "train"):
        cmd = cli.get_command(ctx, name)
        assert "Examples:" in (cmd.help or ""), name
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"comet {name} {param.opts[0]}: no help"
                shown = param.show_default and param.default is not None
                assert param.is_flag or shown or "default" in param.help.lower(), f"comet {name} {param.opts[0]}"
        assert run([name, "--help"], env).returncode == OK
    top = run(["--help"], env).stdout.decode()
    for code in ("0 ok", "1 error", "2 usage error", "130 interrupted", "141 stdout closed early"):
        assert code in " ".join(top.split()), code


def test_train_shares_the_common_options_and_its_help_is_instant(env):
    import click

    from comet_cli.main import cli

    ctx = click.Context(cli)
    opts = {o: p for p in cli.get_command(ctx, "train").params if isinstance(p, click.Option) for o in p.opts}
    for flag in ("-m", "--model", "-p", "--precision", "-v", "-q", "--json", "--threads", "--out"):
        assert flag in opts, flag
    reading = {o: p for p in cli.get_command(ctx, "ask").params if isinstance(p, click.Option) for o in p.opts}
    for flag in ("--model", "--threads", "--quiet", "--verbose"):
        assert opts[flag].opts == reading[flag].opts, flag
    assert opts["--precision"].default == "4bit" and "bf16" in opts["--precision"].help
    # no torch at import: `comet train --help` does not pay for it
    code = "import sys, comet_cli.train_cmd, comet_cli.main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    p = run(["train", "--help"], env)
    assert p.returncode == OK and b"[default: runs/train]" in p.stdout and b"fetch_data.py" in p.stdout


def test_train_without_data_says_how_to_fetch_it_before_loading_a_model(env, tmp_path):
    p = run_no_stdin(["train", "--out", tmp_path / "run"], dict(env, COMET_DATA=str(tmp_path / "no-data")))
    line = one_line_error(p, 1, "python scripts/fetch_data.py", "no-data")
    assert "loading" not in p.stderr.decode(), line
    assert not (tmp_path / "run").exists()


def test_train_out_that_is_a_file_or_resume_without_a_checkpoint_fails_before_loading(env, tmp_path):
    no_data = dict(env, COMET_DATA=str(tmp_path / "no-data"))  # --out is checked before the data folder
    (tmp_path / "file").write_text("not a folder")
    one_line_error(run_no_stdin(["train", "--out", tmp_path / "file"], no_data), 1, "is a file, not a folder")
    p = run_no_stdin(["train", "--out", tmp_path / "typo", "--resume"], no_data)
    one_line_error(p, 1, f"--resume: {tmp_path / 'typo'} (no such folder) has no train_state.safetensors",
                   "drop --resume to start a new run")
    (tmp_path / "empty").mkdir()
    p2 = run_no_stdin(["train", "--out", tmp_path / "empty", "--resume"], no_data)
    one_line_error(p2, 1, f"{tmp_path / 'empty'} has no train_state.safetensors")
    assert "loading" not in p.stderr.decode() + p2.stderr.decode() and not (tmp_path / "typo").exists()


def test_missing_adapter_is_a_usage_error_before_loading(env, files, tmp_path):
    usage_error(run_no_stdin(["ask", "--adapter", tmp_path / "nope.safetensors", files["txt"], "q"], env),
                "--adapter", "does not exist")
    usage_error(run_no_stdin(["summarize", "--adapter", tmp_path, files["txt"]], env), "--adapter", "directory")


def test_info_verbose_shows_the_traceback_of_an_internal_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import comet_core.state_io
    from comet_cli import main

    def boom(path: str):
        raise RuntimeError("boom")

    monkeypatch.setattr(comet_core.state_io, "read_state_file", boom)
    monkeypatch.setattr(main, "_debug", False)
    r = CliRunner().invoke(main.cli, ["info", str(tmp_path / "s.comet"), "-q"])
    assert r.exit_code == 1 and r.stderr == ("comet: error: internal error: RuntimeError: boom "
                                             "(COMET_DEBUG=1 shows the traceback)\n")
    r = CliRunner().invoke(main.cli, ["info", str(tmp_path / "s.comet"), "-v"])
    assert r.exit_code == 1 and "Traceback" in r.stderr and "RuntimeError: boom\n" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("comet: error: internal error: RuntimeError: boom")


def test_info_on_a_file_that_is_not_a_state(env, files, tmp_path):
    line = one_line_error(run(["info", files["txt"]], env), 1, "not a comet state file")
    assert "truncated" not in line and "empty" not in line
    (tmp_path / "short").write_bytes(b"host\n")
    line = one_line_error(run(["info", tmp_path / "short"], env), 1, "not a comet state file")
    assert "truncated" not in line
    (tmp_path / "empty").write_bytes(b"")
    one_line_error(run(["info", tmp_path / "empty"], env), 1, "not a comet state file", "empty")
