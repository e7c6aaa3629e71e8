"""Following a log for hours in flat memory: RSS of `comet read --follow` over a long synthetic stream.

    python -m bench.follow_rss --duration 300            # the README figure: 5 minutes
    python -m bench.follow_rss --duration 3600 --rate 4000 --rotate-every 600

A writer appends synthetic log lines (timestamp, level, service, request id, message; ~100 bytes each) to a
file at --rate bytes/s, rotating it every --rotate-every seconds as logrotate does (rename, then a new file
under the name), while `comet read --follow LOG --save STATE --json --checkpoint-every N` follows it. The
resident set size of the comet process (model included) is sampled every --sample-every seconds. After
--duration the writer stops, comet gets up to --catch-up seconds to read what is left, then Ctrl-C saves
and stops it. Reported: RSS once following (the first checkpoint), at the end, its peak and spread after
that point, the slope of a least-squares line through the second half of the samples (MiB per hour),
tokens read, checkpoints, rotations seen, state size, and the bytes left unread (0 if comet kept up).
Writes bench/results/follow_rss.json and follow_rss.png.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import machine, other_load, print_table, write_json

MiB = 1 << 20
LEVELS = ["INFO"] * 14 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
SERVICES = ["api", "auth", "billing", "scheduler", "db-pool", "mailer", "cache", "nightly-job"]
MESSAGES = [
    "GET /v1/orders/{n} 200 in {ms} ms", "POST /v1/login 401 for user u{n}", "cache miss for key k{n}, refilled",
    "connection pool at {p}% ({n} of 64 in use)", "job {n} finished in {ms} ms", "retrying payment {n} (attempt 2)",
    "disk usage on /var at {p}%", "sent {n} mails, {p} bounced", "slow query ({ms} ms): SELECT * FROM orders",
    "worker {n} restarted after {ms} ms without heartbeat", "certificate expires in {p} days",
]


def log_line(r: random.Random, t: float) -> str:
    msg = r.choice(MESSAGES).format(n=r.randrange(100_000), ms=r.randrange(1, 5000), p=r.randrange(100))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
    who = f"{r.choice(SERVICES)}[{r.randrange(900, 999)}]"
    return f"{stamp} {r.choice(LEVELS):5} {who} req={r.getrandbits(32):08x} {msg}\n"


class Writer(threading.Thread):
    """Appends log lines at `rate` bytes/s until stopped; rotates every `rotate_every` seconds."""

    def __init__(self, path: Path, rate: float, rotate_every: float, seed: int = 0):
        super().__init__(daemon=True)
        self.path, self.rate, self.rotate_every = path, rate, rotate_every
        self.r = random.Random(seed)
        self.written = 0
        self.rotations = 0
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = last_rotation = time.monotonic()
        f = open(self.path, "ab")
        try:
            while not self.stop.wait(0.1):
                now = time.monotonic()
                if self.rotate_every and now - last_rotation >= self.rotate_every:
                    f.close()
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    f = open(self.path, "ab")
                    self.rotations, last_rotation = self.rotations + 1, now
                buf = []
                while self.written + sum(map(len, buf)) < self.rate * (now - t0):
                    buf.append(log_line(self.r, time.time()).encode())
                data = b"".join(buf)
                f.write(data)
                f.flush()
                self.written += len(data)
        finally:
            f.close()


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mt, mr = sum(t for t, _ in points) / n, sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (r - mr) for t, r in points) / var * 3600 if var else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300, help="seconds of writing (default 300)")
    ap.add_argument("--rate", type=float, default=500, help="bytes/s appended (default 500: ~5 lines/s)")
    ap.add_argument("--rotate-every", type=float, default=120, help="seconds between rotations (0: never)")
    ap.add_argument("--checkpoint-every", type=float, default=10, help="comet's --checkpoint-every (s)")
    ap.add_argument("--sample-every", type=float, default=2, help="seconds between two RSS samples")
    ap.add_argument("--catch-up", type=float, default=300, help="seconds comet may take to read what is left")
    ap.add_argument("--model", default=None, help="comet --model (default: the shipped SmolLM2-135M)")
    ap.add_argument("--precision", default="4bit")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args(argv)
    warn = other_load()
    if warn:
        print(f"warning: {warn}", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="comet-follow-"))
    log, state = tmp / "app.log", tmp / "app.comet"
    log.write_bytes(b"")
    cmd = [sys.executable, "-m", "comet_cli", "read", "--follow", str(log), "--save", str(state), "--json",
           "--checkpoint-every", str(a.checkpoint_every), "--precision", a.precision]
    cmd += ["--model", a.model] if a.model else []
    cmd += ["--threads", str(a.threads)] if a.threads else []
    writer = Writer(log, a.rate, a.rotate_every)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    checkpoints: list[dict] = []
    err: list[str] = []

    def read_out() -> None:
        for raw in proc.stdout:
            obj = json.loads(raw)
            if "checkpoint" in obj:
                checkpoints.append(obj)
            lines.put(obj)

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=lambda: err.extend(x.decode() for x in proc.stderr), daemon=True).start()
    ps = psutil.Process(proc.pid)
    t0 = time.monotonic()
    samples: list[dict] = []

    def sample(phase: str) -> None:
        try:
            rss = ps.memory_info().rss / MiB
        except psutil.Error:
            return
        samples.append({"t": round(time.monotonic() - t0, 2), "rss_mb": round(rss, 1), "phase": phase,
                        "written": writer.written, "checkpoints": len(checkpoints),
                        "tokens": checkpoints[-1]["tokens_total"] if checkpoints else 0})

    # start writing once comet holds the log open (it opens its inputs before loading the model)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if any(f.path == str(log) for f in ps.open_files()):
                break
        except psutil.Error:
            pass
        sample("starting")
        time.sleep(0.2)
    writer.start()
    t_write_end = time.monotonic() + a.duration
    while time.monotonic() < t_write_end and proc.poll() is None:
        sample("writing")
        time.sleep(a.sample_every)
    writer.stop.set()
    writer.join()
    # catch up: wait for a checkpoint holding everything written (every generation read to its end)
    deadline, caught_up = time.monotonic() + a.catch_up, False
    while time.monotonic() < deadline and proc.poll() is None and not caught_up:
        sample("catching up")
        c = checkpoints[-1] if checkpoints else None
        caught_up = bool(c) and sum(s["offset"] for s in c["sources"]) == writer.written \
            and len(c["sources"]) == writer.rotations + 1
        if not caught_up:
            time.sleep(min(a.sample_every, 1.0))
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    time.sleep(0.2)
    final = next((o for o in reversed(checkpoints) if o.get("stopped")), checkpoints[-1] if checkpoints else None)
    if rc not in (0, 130) or final is None:
        raise SystemExit(f"comet read --follow failed (exit {rc}): {''.join(err)[-2000:]}")
    read_bytes = sum(s["offset"] for s in final["sources"])
    warm = next((s["t"] for s in samples if s["checkpoints"] >= 1), samples[0]["t"])
    after = [s for s in samples if s["t"] >= warm]
    rss = [s["rss_mb"] for s in after]
    half = [(s["t"], s["rss_mb"]) for s in after[len(after) // 2:]]
    result = {
        "duration_s": a.duration, "rate_bytes_per_s": a.rate, "rotate_every_s": a.rotate_every,
        "checkpoint_every_s": a.checkpoint_every, "model": a.model or "SmolLM2-135M-Instruct",
        "precision": a.precision, "threads": a.threads, "bytes_written": writer.written, "bytes_read": read_bytes,
        "behind_bytes": writer.written - read_bytes, "rotations": writer.rotations,
        "rotations_seen": sum("was rotated" in x for x in err), "tokens_read": final["tokens_total"],
        "checkpoints": len([c for c in checkpoints if not c.get("stopped")]), "state_bytes": state.stat().st_size,
        "rss_following_mb": rss[0] if rss else None, "rss_end_mb": rss[-1] if rss else None,
        "rss_peak_after_warm_mb": max(rss) if rss else None, "rss_min_after_warm_mb": min(rss) if rss else None,
        "rss_spread_pct": round(100 * (max(rss) - min(rss)) / (sum(rss) / len(rss)), 2) if rss else None,
        "rss_slope_mb_per_h": (round(v, 2) if (v := slope_per_hour(half)) is not None else None),
        "comet_exit": rc, "warning": warn, "machine": machine(), "samples": samples,
        "checkpoint_lines": [{k: c[k] for k in ("checkpoint", "stopped", "tokens_total", "rss_mb", "seconds")}
                             for c in checkpoints],
    }
    step = max(1, len(samples) // 12)
    print_table(f"comet read --follow: RSS over {a.duration:.0f} s of a {a.rate:.0f} B/s log "
                f"({a.precision}, rotation every {a.rotate_every:g} s, checkpoint every {a.checkpoint_every:g} s)",
                ["t (s)", "phase", "written", "tokens (last checkpoint)", "RSS MiB"],
                [[s["t"], s["phase"], s["written"], s["tokens"], s["rss_mb"]] for s in samples[::step] + samples[-1:]])
    print_table("Summary", ["measure", "value"], [
        ["bytes written / read", f"{writer.written:,} / {read_bytes:,}"],
        ["tokens read", result["tokens_read"]],
        ["rotations (written / seen)", f"{writer.rotations} / {result['rotations_seen']}"],
        ["checkpoints", result["checkpoints"]],
        ["RSS once following (MiB)", result["rss_following_mb"]],
        ["RSS at the end (MiB)", result["rss_end_mb"]],
        ["RSS min..max after that (MiB)", f"{result['rss_min_after_warm_mb']}..{result['rss_peak_after_warm_mb']}"],
        ["RSS spread (% of mean)", result["rss_spread_pct"]],
        ["RSS slope, 2nd half (MiB/h)", result["rss_slope_mb_per_h"]],
        ["state file (bytes)", result["state_bytes"]],
    ])
    shutil.rmtree(tmp, ignore_errors=True)
    path = write_json(a.json_out, "follow_rss.json", result)
    print(f"\nwrote {path}")
    _plot(result, path.with_suffix(".png"))
    return result


def _plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    s = result["samples"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([x["t"] / 60 for x in s], [x["rss_mb"] for x in s], label="comet RSS (MiB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(0, max(x["rss_mb"] for x in s) * 1.15)
    ax2 = ax.twinx()
    ax2.plot([x["t"] / 60 for x in s], [x["tokens"] / 1000 for x in s], color="tab:orange", label="tokens read (k)")
    ax2.set_ylabel("tokens read (k)")
    ax.set_title(f"comet read --follow: {result['bytes_written'] / 1e6:.2f} MB of log, {result['rotations']} "
                 "rotations", fontsize=10)
    fig.legend(loc="center right", bbox_to_anchor=(0.86, 0.45), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
