"""`comet read --follow`, checkpoints, and reading a state while another process writes it.

The sources part runs in-process on real files and pipes (the follower's idle hook drives the writes, so
no timing is involved). The command part runs the real `comet` in subprocesses with the tiny random model
(tests/tiny.py), as tests/test_cli.py does: a file that grows while followed ends in the same state as one
read of the whole file, bit for bit; rotation and truncation; `info` and `ask` while the follower
checkpoints; kill -9 and a resume from the last checkpoint that reads nothing twice.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cli import comet_cmd, run, tiny_args
from tiny import save_tiny

from comet_core.sources import Piece, Reopened, SourceError, open_source

ROOT = Path(__file__).resolve().parents[1]
OK, INTERRUPTED, USAGE = 0, 130, 2
WORDS = ("café naïve 12345 key ERROR WARN INFO service restarted nightly job failed disk full the pass "
         "remember it call me ishmael some years ago").split()


def log_lines(n: int, seed: int, start: int = 0) -> bytes:
    """Log-like UTF-8 lines (with multibyte characters)."""
    r = random.Random(seed)
    return "".join(f"2026-11-25 12:{(start + i) // 60 % 60:02d}:{(start + i) % 60:02d} "
                   + " ".join(r.choice(WORDS) for _ in range(8)) + "\n" for i in range(n)).encode()


# --- sources: following a file, in-process -----------------------------------------------------------------

def follow_with(path: Path, actions: list, start: int = 0, encoding: str | None = None):
    """Follow `path`; each time the follower waits for more, run the next action; end when none is left.
    Returns (items, the source) where items are (item, offset after it, sha256 after it)."""
    src = open_source(str(path), encoding=encoding, follow=True)
    if start:
        src.sha256_prefix(start)
    todo = list(actions)

    def idle() -> bool:
        if not todo:
            return True
        todo.pop(0)()
        return False

    items = [(it, src.offset, src.sha256) for it in src.follow(start, idle, poll=0.01)]
    return items, src


def texts(items) -> str:
    return "".join(it.text for it, _, _ in items if isinstance(it, Piece))


def append(path: Path, data: bytes):
    def do():
        with open(path, "ab") as f:
            f.write(data)
    return do


def test_follow_reads_what_is_appended_even_a_split_character(tmp_path):
    p = tmp_path / "app.log"
    a, b = log_lines(20, 1), log_lines(30, 2, 20)
    p.write_bytes(a)
    cut = b.index("é".encode()) + 1  # the append ends inside a two-byte character
    items, src = follow_with(p, [append(p, b[:cut]), append(p, b[cut:])])
    assert texts(items) == (a + b).decode()
    assert src.offset == len(a + b) == src.size and src.sha256 == hashlib.sha256(a + b).hexdigest()
    assert not any(isinstance(it, Reopened) for it, _, _ in items)
    for _, off, sha in items:  # every offset is a clean restart point, and the hash covers exactly it
        assert sha == hashlib.sha256((a + b)[:off]).hexdigest()
        (a + b)[:off].decode()  # never half a character
    assert len(a) + cut - 1 in [off for _, off, _ in items]  # the first append's piece stopped before the "é"


def test_follow_across_rotation_and_truncation(tmp_path):
    p = tmp_path / "app.log"
    a, late, b, c = log_lines(10, 1), b"written to the old file after the rename\n", log_lines(12, 2), b"short\n"
    p.write_bytes(a)

    def rotate():
        os.rename(p, tmp_path / "app.log.1")
        with open(tmp_path / "app.log.1", "ab") as f:
            f.write(late)  # the writer still had the old file open
        p.write_bytes(codecs.BOM_UTF8 + b)  # the new file has a BOM: counted in offsets, not in the text

    def truncate():
        with open(p, "wb") as f:  # same file, cut short and rewritten (copytruncate)
            f.write(c)

    items, src = follow_with(p, [rotate, truncate])
    kinds = [it.reason if isinstance(it, Reopened) else "piece" for it, _, _ in items]
    assert [k for k in kinds if k != "piece"] == ["rotated", "truncated"]
    assert texts(items) == (a + late + b + c).decode()
    # each generation's offsets and hashes count from its own start
    r, t = kinds.index("rotated"), kinds.index("truncated")
    assert items[r - 1][1] == len(a + late) and items[r][1] == 0
    assert items[t - 1][1] == len(codecs.BOM_UTF8 + b)
    assert items[t - 1][2] == hashlib.sha256(codecs.BOM_UTF8 + b).hexdigest()
    assert src.offset == len(c) and src.sha256 == hashlib.sha256(c).hexdigest()


def test_follow_keeps_the_old_file_while_no_new_one_is_there(tmp_path):
    p, old = tmp_path / "app.log", tmp_path / "app.log.1"
    a, late, b = log_lines(5, 1), b"still written to the renamed file\n", log_lines(5, 2)
    p.write_bytes(a)
    items, src = follow_with(p, [lambda: os.rename(p, old), append(old, late), lambda: None,
                                 lambda: p.write_bytes(b)])
    assert texts(items) == (a + late + b).decode()
    assert [it.reason for it, _, _ in items if isinstance(it, Reopened)] == ["rotated"]
    assert src.offset == len(b)


def test_follow_resumes_at_an_offset(tmp_path):
    p = tmp_path / "app.log"
    a, b = log_lines(30, 3), log_lines(5, 4)
    p.write_bytes(a)
    mid = a.index(b"\n", len(a) // 2) + 1
    items, src = follow_with(p, [append(p, b)], start=mid)
    assert texts(items) == (a[mid:] + b).decode()
    assert src.sha256 == hashlib.sha256(a + b).hexdigest()


def test_follow_accepts_an_empty_file_and_refuses_gzip_and_pdf(tmp_path):
    p = tmp_path / "new.log"
    p.write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        open_source(str(p))
    items, src = follow_with(p, [append(p, b"first line\n")])
    assert texts(items) == "first line\n" and src.encoding == "utf-8"
    gz = tmp_path / "old.log.gz"
    gz.write_bytes(gzip.compress(b"hello\n"))
    with pytest.raises(SourceError, match="cannot be followed"):
        open_source(str(gz), follow=True)
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%stuff\n")
    with pytest.raises(SourceError, match="cannot be followed"):
        open_source(str(pdf), follow=True)


def test_stream_is_sniffed_without_waiting_for_64k_and_read_with_an_idle_hook():
    """A pipe whose writer stays open: open_source returns with what came first (no 64 KiB wait), and
    pieces(idle=...) hands control back while the writer is quiet."""
    r, w = os.pipe()
    os.write(w, b"first line\n")
    t0 = time.monotonic()
    src = open_source("-", stdin=os.fdopen(r, "rb"))
    assert time.monotonic() - t0 < 5
    calls = []

    def idle() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            os.write(w, "second line é\n".encode())
        elif len(calls) == 2:
            os.close(w)  # the end of the stream
        return False

    text = "".join(p.text for p in src.pieces(idle=idle, poll=0.05))
    assert text == "first line\nsecond line é\n" and len(calls) == 2
    assert src.offset == len("first line\nsecond line é\n".encode())
    r2, w2 = os.pipe()
    os.write(w2, b"quiet producer\n")
    src = open_source("-", stdin=os.fdopen(r2, "rb"))
    assert "".join(p.text for p in src.pieces(idle=lambda: True, poll=0.05)) == "quiet producer\n"
    os.close(w2)


# --- the command ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, OMP_NUM_THREADS="1", COMET_CACHE=str(cache), COLUMNS="100", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


class Follower:
    """A `comet read --follow ... --json` in a subprocess; its checkpoint lines arrive on a queue."""

    def __init__(self, args: list, env: dict, stdin=None):
        self.proc = subprocess.Popen(comet_cmd() + [str(a) for a in args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=stdin, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[dict] = []
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()

    def _read_out(self) -> None:
        for raw in self.proc.stdout:
            obj = json.loads(raw)
            self.out.append(obj)
            self.lines.put(obj)
        self.lines.put(None)

    def _read_err(self) -> None:
        for raw in self.proc.stderr:
            self.err.append(raw.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def checkpoint(self, pred=lambda c: True, timeout: float = 300) -> dict:
        """The next checkpoint line for which pred(line) holds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such checkpoint within {timeout} s; stderr:\n{self.stderr}") from None
            if obj is None:
                raise AssertionError(f"comet ended (exit {self.proc.wait()}); stderr:\n{self.stderr}")
            if "checkpoint" in obj and pred(obj):
                return obj

    def caught_up(self, path: Path, n_sources: int = 1, timeout: float = 300) -> dict:
        """A checkpoint that holds everything `path` has now (its newest entry at the file's size)."""
        size = path.stat().st_size
        return self.checkpoint(lambda c: len(c["sources"]) == n_sources and c["sources"][-1]["offset"] == size,
                               timeout)

    def wait(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._err_thread.join(timeout=10)
        return rc


def follow_args(path: Path, state: Path, tiny: Path, every: float = 0.3, *extra) -> list:
    return ["read", "--follow", path, "--save", state, "--json", "--checkpoint-every", every, *tiny_args(tiny),
            *extra]


def state_of(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    from comet_core.state_io import read_meta

    return read_meta(path)[0], load_file(str(path))


def assert_same_memory(a: Path, b: Path, sources: bool = True) -> None:
    """Bit for bit: every tensor (memory, pending tokens, pending text) and the counters."""
    (ma, ta), (mb, tb) = state_of(a), state_of(b)
    keys = ("tokens", "chunks", "beacons", "pending_tokens", "fingerprint", "settings") + (("sources",) if sources
                                                                                         else ())
    for k in keys:
        assert ma[k] == mb[k], (k, ma[k], mb[k])
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].equal(tb[k]), k


def test_growing_file_ends_as_one_read_of_the_whole_file(tmp_path, env, tiny):
    log, state, ref = tmp_path / "app.log", tmp_path / "app.comet", tmp_path / "ref.comet"
    log.write_bytes(log_lines(60, 1))
    f = Follower(follow_args(log, state, tiny, 0.3, "--idle-exit", 6), env)
    first = f.caught_up(log)
    assert first["sources"][0]["name"] == str(log) and not first["stopped"] and first["tokens_total"] > 500
    more = log_lines(150, 2, 60)
    cut = more.index("ï".encode()) + 1
    append(log, more[:cut])()  # ends inside a character
    time.sleep(1)
    append(log, more[cut:])()
    f.caught_up(log)
    append(log, log_lines(40, 3, 210) + b"a last line without newline")()
    last = f.caught_up(log)
    assert f.wait() == OK, f.stderr
    final = f.out[-1]
    assert final["command"] == "read" and final["checkpoints"] >= 3 and final["tokens_total"] > last["chunks"] * 512
    assert [c["checkpoint"] for c in f.out[:-1]] == list(range(1, len(f.out)))
    meta = state_of(state)[0]
    assert "interrupted" not in meta and "checkpoint" not in meta and meta["sources"][0]["done"]
    p = run(["read", log, "--save", ref, "-q", *tiny_args(tiny)], env)
    assert p.returncode == OK, p.stderr.decode()
    assert_same_memory(state, ref)  # sources included: same offsets, size, sha256


def test_a_follow_started_again_from_its_state_goes_on_where_it_stopped(tmp_path, env, tiny):
    log, state, ref = tmp_path / "app.log", tmp_path / "app.comet", tmp_path / "ref.comet"
    log.write_bytes(log_lines(70, 7))
    p = run(follow_args(log, state, tiny, 0.3, "--idle-exit", 1), env)
    assert p.returncode == OK, p.stderr.decode()
    log.write_bytes(log.read_bytes() + log_lines(90, 8, 70))  # the log grew while nobody followed it
    p = run(follow_args(log, state, tiny, 0.3, "--idle-exit", 1, "--state", state), env)
    assert p.returncode == OK, p.stderr.decode()
    assert "following on from there" in p.stderr.decode() and "reading it again" not in p.stderr.decode()
    p = run(["read", log, "--save", ref, "-q", *tiny_args(tiny)], env)
    assert p.returncode == OK, p.stderr.decode()
    assert_same_memory(state, ref)  # one source record, nothing read twice: as one read of the whole file


def test_rotation_and_truncation_are_followed(tmp_path, env, tiny):
    log, state = tmp_path / "app.log", tmp_path / "app.comet"
    a, late, b, c = log_lines(80, 4), b"a late line in the old file\n", log_lines(90, 5, 80), log_lines(20, 6, 170)
    log.write_bytes(a)
    f = Follower(follow_args(log, state, tiny, 0.3, "--idle-exit", 6), env)
    f.caught_up(log)
    os.rename(log, tmp_path / "app.log.1")  # logrotate: rename, the writer finishes a line, a new file
    append(tmp_path / "app.log.1", late)()
    log.write_bytes(b)
    f.caught_up(log, n_sources=2)
    log.write_bytes(c)  # copytruncate: the same file, shorter
    f.caught_up(log, n_sources=3)
    assert f.wait() == OK, f.stderr
    err = f.stderr
    assert "app.log was rotated (a new file under the same name)" in err and "app.log was truncated" in err
    meta = state_of(state)[0]
    srcs = meta["sources"]
    assert [s["done"] for s in srcs] == [True, True, True]
    assert [s["offset"] for s in srcs] == [len(a + late), len(b), len(c)]
    assert [s["sha256"] for s in srcs] == [hashlib.sha256(x).hexdigest() for x in (a + late, b, c)]
    whole = tmp_path / "whole.log"  # the stream as one file: the memory must be the same
    whole.write_bytes(a + late + b + c)
    p = run(["read", whole, "--save", tmp_path / "ref.comet", "-q", *tiny_args(tiny)], env)
    assert p.returncode == OK, p.stderr.decode()
    assert_same_memory(state, tmp_path / "ref.comet", sources=False)


def test_info_and_ask_while_the_follower_checkpoints(tmp_path, env, tiny):
    from comet_core.state_io import StateError, load_state, read_state_file

    log, state = tmp_path / "app.log", tmp_path / "app.comet"
    log.write_bytes(log_lines(100, 7))
    f = Follower(follow_args(log, state, tiny, 0.2), env)
    f.caught_up(log)
    stop = threading.Event()

    def writer():
        i = 100
        while not stop.is_set():
            append(log, log_lines(3, i, i))()
            i += 3
            time.sleep(0.03)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        # a reader in a loop never sees a half-written file, and sees it change
        versions, t_end = set(), time.monotonic() + 4
        while time.monotonic() < t_end:
            try:
                sf = read_state_file(state)
            except StateError as e:
                raise AssertionError(f"a reader saw a broken state while it was written: {e}") from None
            assert sf.meta["checkpoint"]["pid"] == f.proc.pid and sf.nbytes > 0
            versions.add(sf.meta["data_sha256"])
        assert len(versions) >= 3
        # a state is loaded from the bytes read once (the file is not opened again: here it is gone)
        copy = tmp_path / "copy.comet"
        copy.write_bytes(state.read_bytes())
        sf = read_state_file(copy)
        copy.unlink()
        m = sf.meta
        expect = dict(model=m["model"], fingerprint=m["fingerprint"], settings=m["settings"], dtype=m["dtype"],
                      n_layers=m["n_layers"], d=sf.tensors["global_state"].shape[-1], precision=m["precision"])
        st, _ = load_state(sf, expect)
        assert st.tokens == m["tokens"] and st.sources == m["sources"] and sf.age is not None and sf.age < 60
        p = run(["info", state, "--json"], env)
        assert p.returncode == OK, p.stderr.decode()
        info = json.loads(p.stdout)
        assert info["checkpoint"]["pid"] == f.proc.pid and info["checkpoint"]["follow"] is True
        assert info["interrupted"] is True and 0 <= info["age_seconds"] < 60
        text = run(["info", state], env).stdout.decode()
        assert "checkpoint of a read in progress (comet read --follow, pid" in text and "running" in text
        assert " s ago)" in text
        p = run(["ask", "--state", state, "What failed?", "-n", "3", "--json"], env)
        assert p.returncode == OK, p.stderr.decode()
        assert json.loads(p.stdout)["tokens_total"] > 0
        err = p.stderr.decode()
        assert "is a checkpoint of a read in progress" in err and "s ago" in err, err
    finally:
        stop.set()
        t.join()
    f.proc.send_signal(signal.SIGINT)
    assert f.wait() == INTERRUPTED, f.stderr
    assert "stopped following" in f.stderr and "Traceback" not in f.stderr
    assert f.out[-1]["stopped"] is True and f.out[-1]["sources"][0]["offset"] <= log.stat().st_size
    meta = state_of(state)[0]
    assert "checkpoint" not in meta and meta["interrupted"]["done"] == 0


def test_kill_9_resumes_from_the_last_checkpoint_reading_nothing_twice(tmp_path, env, tiny):
    log, state, ref = tmp_path / "app.log", tmp_path / "app.comet", tmp_path / "ref.comet"
    log.write_bytes(log_lines(70, 8))
    f = Follower(follow_args(log, state, tiny, 0.3), env)
    f.caught_up(log)
    append(log, log_lines(120, 9, 70))()
    f.caught_up(log)
    append(log, log_lines(200, 10, 190))()
    f.proc.send_signal(signal.SIGKILL)  # mid-read of the last append, maybe mid-checkpoint
    assert f.wait() == -signal.SIGKILL
    meta = state_of(state)[0]  # the last complete checkpoint
    at, total = meta["sources"][0]["offset"], meta["tokens"] + meta["pending_tokens"]
    assert meta["checkpoint"] and meta["interrupted"]["done"] == 0 and 0 < at <= log.stat().st_size
    text = run(["info", state], env).stdout.decode()
    assert "not running: the same command resumes it" in text
    append(log, log_lines(50, 11, 390))()
    f2 = Follower(follow_args(log, state, tiny, 0.3, "--idle-exit", 3), env)
    assert f2.wait() == OK, f2.stderr
    assert f"resuming {log} at byte {at:,}" in f2.stderr
    final = f2.out[-1]
    assert final["resumed"] is True and total + final["tokens_read"] == final["tokens_total"]
    p = run(["read", log, "--save", ref, "-q", *tiny_args(tiny)], env)
    assert p.returncode == OK, p.stderr.decode()
    assert_same_memory(state, ref)


def test_stdin_is_followed_and_checkpointed_while_the_producer_is_quiet(tmp_path, env, tiny):
    state = tmp_path / "s.comet"
    f = Follower(["read", "--follow", "-", "--save", state, "--json", "--checkpoint-every", 0.3, *tiny_args(tiny)],
                 env, stdin=subprocess.PIPE)
    sent = log_lines(60, 12)
    f.proc.stdin.write(sent)
    f.proc.stdin.flush()
    f.checkpoint(lambda c: c["sources"][0]["offset"] == len(sent))  # the pipe is still open
    more = log_lines(30, 13, 60)
    f.proc.stdin.write(more)
    f.proc.stdin.close()  # the end of the stream ends the read
    assert f.wait() == OK, f.stderr
    meta = state_of(state)[0]
    assert meta["sources"][0]["kind"] == "stdin" and meta["sources"][0]["size"] == len(sent + more)
    assert "interrupted" not in meta and "checkpoint" not in meta


def test_follow_usage_errors(tmp_path, env, tiny):
    log = tmp_path / "a.log"
    log.write_bytes(log_lines(3, 1))
    gz = tmp_path / "a.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    s = tmp_path / "s.comet"
    for args, code, msg in (
            (["read", "--follow", log, log, "--save", s], USAGE, "--follow follows one PATH"),
            (["read", log, "--idle-exit", "3", "--save", s], USAGE, "--idle-exit only makes sense with --follow"),
            (["read", "--follow", gz, "--save", s], 1, "gzip files cannot be followed"),
            (["read", "--follow", log, "--save", s, "--checkpoint-every", "-1"], USAGE, "checkpoint-every")):
        p = run([*args, *tiny_args(tiny)], env)
        err = p.stderr.decode()
        assert p.returncode == code and msg in err and "Traceback" not in err, (args, err)
    assert not s.exists()


def test_follow_panel_and_plain_line():
    import io

    from rich.console import Console

    from comet_cli.live import LiveDisplay, Stats, progress_line

    s = Stats("read", model="tiny · fp32 · cpu", follow=True, checkpoint_every=60)
    s.start_reading(None, 1)
    s.source, s.source_index = "app.log", 1
    s.update(4_096, 8, 40_960)
    s.last_input = time.monotonic() - 75
    line = progress_line(s)
    assert "last input 1:15 ago" in line and "no checkpoint yet (every 60 s)" in line
    s.checkpointed(43_000)
    s.reopened = 2
    con = Console(file=io.StringIO(), width=120, force_terminal=True)
    con.print(LiveDisplay(s)._render())
    text = con.file.getvalue()
    for frag in ("app.log  (following, reopened 2×)", "4,096", "tok/s now", "last input 1:15 ago",
                 "waiting for more", "#1 0:00 ago", "every 60 s", "RSS"):
        assert frag in text, (frag, text)


def test_bench_follow_rss_runs(tmp_path, env, tiny):
    out = tmp_path / "follow_rss.json"
    args = ["--duration", "6", "--model", str(tiny), "--precision", "fp32", "--rate", "2000", "--checkpoint-every",
            "1", "--sample-every", "0.5", "--rotate-every", "3", "--catch-up", "60", "--json-out", str(out)]
    p = subprocess.run([sys.executable, "-m", "bench.follow_rss", *args], cwd=ROOT, env=env, capture_output=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr.decode() + p.stdout.decode()
    res = json.loads(out.read_text())
    assert len(res["samples"]) >= 5 and res["bytes_written"] > 5000 and res["rotations"] >= 1
    assert res["tokens_read"] > 0 and res["checkpoints"] >= 1 and res["behind_bytes"] == 0
    assert res["rss_following_mb"] > 50 and res["rss_end_mb"] > 50
    assert "RSS" in p.stdout.decode()
