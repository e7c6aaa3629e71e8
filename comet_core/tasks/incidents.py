"""The ``incident`` task: a service log in which one scheduled job fails, and a plain question about why.

The log is a healthy service's routine lines (requests, pool sizes, logins, other jobs finishing) with
one incident somewhere in it: a job starts, perhaps after a warning, one line in the job's component
states the cause (a full disk, an expired certificate, a refused connection, ... twelve kinds), and the
scheduler marks the job FAILED, sometimes with a short reason. Routine WARN and ERROR lines that have
nothing to do with the job stand beside it, so "the last ERROR" is not the answer.

What a right answer names is the cause: ``answers`` lists words any right answer contains (``score``
checks that one appears), and ``answer`` is the sentence training teaches. The eval split changes the
log formats, the jobs, the wording of every cause line and the questions (incidents.toml), so a
measure on it asks whether reading logs generalises, not whether a template was learned.

Lengths: the text is whole log lines, except the first, which starts mid-line as a piece of a log cut
from the middle would (``tail -c``); that cut is what brings the length to within ``LENGTH_TOLERANCE``.
"""

from __future__ import annotations

import datetime as dt
import random
import tomllib
from pathlib import Path
from typing import Any

from .generators import Sample
from .haystack import LENGTH_TOLERANCE, TooShort, _count, _depth, _ntok

_DATA = tomllib.loads((Path(__file__).parent / "incidents.toml").read_text(encoding="utf-8"))
_CAUSES: tuple[dict[str, Any], ...] = tuple(_DATA["cause"])
_ROUTINE: tuple[tuple[str, str, str], ...] = tuple(tuple(x) for x in _DATA["routine"]["lines"])
Event = tuple[str, str, str]  # (level, component, message)


def _values(rng: random.Random) -> dict[str, str]:
    """The cause's parameters: a path, a file, a host, ... (shared by both splits: they are not the skill)."""
    v = {k: rng.choice(pool) for k, pool in _DATA["values"].items()}
    v.update(mb=str(rng.randint(600, 7900)), limit=str(rng.choice((512, 1024, 2048, 4096))),
             sec=str(rng.choice((10, 30, 60, 120, 300))), n=str(rng.randint(91, 99)), pid=str(rng.randint(300, 65000)))
    return v


def _routine(rng: random.Random) -> Event:
    comp, level, msg = rng.choice(_ROUTINE)
    r = _DATA["routine"]
    return level, comp, msg.format(
        res=rng.choice(r["resources"]), n=rng.randint(1, 99999), m=rng.randint(1, 90), ms=rng.randint(2, 2400),
        pct=rng.randint(40, 99), person=rng.choice(r["people"]), other=rng.choice(r["others"]),
        ip=f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        dur=f"{rng.randint(1, 59)}s", load=f"{rng.uniform(0.1, 4):.2f}")


def _render(fmt: str, t: dt.datetime, event: Event, hostname: str, pid: int) -> str:
    level, comp, msg = event
    return fmt.format(ts_iso=t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
                      ts_py=t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}",
                      ts_sys=t.strftime("%b %d %H:%M:%S"), lvl=level, lvl_lower=level.lower(), comp=comp,
                      msg=msg.replace('"', "'") if "msg=" in fmt else msg, hostname=hostname, pid=pid)


def _incident(rng: random.Random, split: str, n_tokens: int) -> tuple[list[Event], int, str, str, list[str], dict]:
    """(the incident's events, index of the cause line, question, answer, keys, meta). Short logs get a
    short incident: under 256 tokens the cause line alone (in the job's component), then one more routine
    line between the incident's lines per 256 tokens."""
    room = max(0, n_tokens // 256 - 1)
    name, desc = rng.choice(_DATA["jobs"][split])
    schedule = rng.choice(_DATA["jobs"]["schedules"])
    cause = rng.choice(_CAUSES)
    v = _values(rng)

    def gap(most: int) -> list[Event]:  # routine lines between two of the incident's
        nonlocal room
        k = rng.randint(0, min(most, room))
        room -= k
        return [_routine(rng) for _ in range(k)]

    events: list[Event] = []
    if cause.get("hint") and rng.random() < 0.5 and room:
        events += [("WARN", "monitor", cause["hint"].format(**v))] + gap(6)
    if n_tokens >= 256:
        events.append(("INFO", "scheduler", f"starting {schedule} job {name}"))
        events += gap(3)
    if rng.random() < 0.5 and room:
        events.append(("INFO", name, f"step 1 of 2 done in {rng.randint(1, 14)}m{rng.randint(0, 59):02d}s"))
        events += gap(2)
    at = len(events)
    events.append(("ERROR", name, rng.choice(cause[split]).format(**v)))
    events += gap(2)
    why = f": {cause['short'].format(**v)}" if rng.random() < 0.5 else ""
    if n_tokens >= 256:
        events.append(("ERROR", "scheduler", f"job {name} FAILED (exit 1){why}"))
    if rng.random() < 0.3 and room:
        events.append(("INFO", "alert", f"paged on-call for job {name}"))
    question = rng.choice(_DATA["questions"][split]).format(desc=desc, Desc=desc[:1].upper() + desc[1:], job=name,
                                                            schedule=schedule)
    keys = [k.format(**v) for k in cause["keys"]]
    meta = {"cause": cause["name"], "job": name, "cause_line": events[at][2]}
    return events, at, question, cause["answer"].format(**v), keys, meta


def make_incident(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                  depth: float | None = None) -> Sample:
    """A log of about ``n_tokens`` tokens in which one job fails; the question asks why. ``depth`` places
    the line that states the cause (a fraction of the log's tokens before it)."""
    d = _depth(rng, depth)
    fmt = rng.choice(_DATA["formats"][split])
    hostname, pid = rng.choice(("web-1", "app-3", "prod-eu-2", "jobs-1")), rng.randint(300, 65000)
    block, at, question, answer, keys, meta = _incident(rng, split, n_tokens)
    probe = dt.datetime(2026, 1, 1)
    block_toks = _count(tokenizer, [_render(fmt, probe, e, hostname, pid) + "\n" for e in block])
    block_tok = sum(block_toks)
    if block_tok > 0.9 * n_tokens:
        raise TooShort(f"n_tokens={n_tokens} is too small for an incident of {block_tok} tokens")
    filler = n_tokens - block_tok
    events: list[Event] = []
    used = 0

    def more(budget: int) -> None:  # routine lines while they fit in `budget` tokens
        nonlocal used
        while True:
            e = _routine(rng)
            k = _ntok(tokenizer, _render(fmt, probe, e, hostname, pid) + "\n")
            if used + k > budget:
                return
            events.append(e)
            used += k

    more(min(filler, max(0, int(d * n_tokens) - sum(block_toks[:at]))))  # the cause line at depth d
    start = len(events)
    events += block
    more(filler)  # (`used` counts routine lines only, as `filler` does)
    t0 = dt.datetime(2026, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
                     rng.randint(0, 59), rng.randint(0, 999) * 1000)
    lines, t = [], t0
    for e in events:
        lines.append(_render(fmt, t, e, hostname, pid))
        t += dt.timedelta(seconds=rng.uniform(0.05, 40))
    body = "\n".join(lines) + "\n"
    tol = max(2, int(LENGTH_TOLERANCE * n_tokens))
    want = n_tokens - _ntok(tokenizer, body)
    while want < -tol and len(lines) > start + len(block):  # lines counted apart can join into more tokens
        lines.pop()
        body = "\n".join(lines) + "\n"
        want = n_tokens - _ntok(tokenizer, body)
    while True:  # the line the cut falls in, earlier than every line of the body
        t0 -= dt.timedelta(seconds=rng.uniform(0.05, 40))
        head = _render(fmt, t0, _routine(rng), hostname, pid) + "\n"
        head_tok = _ntok(tokenizer, head)
        if want < head_tok:
            break
        body, want = head + body, want - head_tok  # a whole line is not enough: it goes in
        lines.insert(0, head[:-1])
        start += 1
    context = body
    for _ in range(4):  # the shortest cut of `head` (its last characters) worth at least `want` tokens
        lo, hi = 0, len(head)  # head[lo:] has at least `want` tokens, head[hi:] fewer
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _ntok(tokenizer, head[mid:]) >= want else (lo, mid)
        context = (head[lo:] if want > 0 else "") + body
        got = _ntok(tokenizer, context)
        if abs(got - n_tokens) <= tol:
            break
        want += n_tokens - got
    before = context[: len(context) - len(body) + sum(len(x) + 1 for x in lines[: start + at])]
    meta.update(n_tokens=got, depth=_ntok(tokenizer, before) / max(1, got), requested_depth=d, format=fmt,
                needle=lines[start + at], char_positions=[len(before)], needle_end=len(before) + len(lines[start + at]))
    return Sample(context, question, answer, "incident", keys, meta)
