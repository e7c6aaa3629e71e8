"""Option values shared by `comet eval` and the benchmarks: token counts (4k, 1M), depths, choice lists.

Token counts: a plain number is tokens, ``k`` means 1,024 (``4k`` = 4,096, ``0.5k`` = 512) and ``M``
1,048,576. Parsers raise ValueError with a one-line message (the CLI turns it into a usage error).
"""

from __future__ import annotations

K = 1024


def parse_tokens(text: str) -> int:
    """"4k" -> 4096, "0.5k" -> 512, "1M" -> 1048576, "300" -> 300."""
    p = text.strip().lower()
    mult = {"k": K, "m": K * K}.get(p[-1:], 1)
    try:
        n = round(float(p[:-1] if mult > 1 else p) * mult)
    except (ValueError, OverflowError):  # "x", "nan"; "inf", "1e400k"
        raise ValueError(f"bad length {text.strip()!r}: give tokens like 4096, 4k or 1M") from None
    if n < 1:
        raise ValueError(f"bad length {text.strip()!r}: must be at least 1 token")
    return n


def parse_token_list(text: str) -> list[int]:
    """"4k,16k,1M" -> [4096, 16384, 1048576], repeats dropped; "" -> []."""
    return list(dict.fromkeys(parse_tokens(p) for p in text.split(",") if p.strip()))


def parse_lengths(text: str) -> list[int]:
    """Like parse_token_list, but at least one length."""
    out = parse_token_list(text)
    if not out:
        raise ValueError("no lengths given")
    return out


def fmt_tokens(n: int) -> str:
    """4096 -> "4k", 1048576 -> "1M", 300 -> "300" (the inverse of parse_tokens on whole k and M)."""
    if n >= K * K and n % (K * K) == 0:
        return f"{n // (K * K)}M"
    return f"{n // K}k" if n >= K and n % K == 0 else str(n)


def parse_depths(text: str) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]; each in [0, 1] (fraction of the filler before the needle)."""
    out = []
    for part in filter(str.strip, text.split(",")):
        try:
            d = float(part)
        except ValueError:
            raise ValueError(f"bad depth {part.strip()!r}: give fractions like 0,0.5,1") from None
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"bad depth {part.strip()!r}: must be between 0 and 1")
        out.append(d)
    if not out:
        raise ValueError("no depths given")
    return list(dict.fromkeys(out))


def parse_choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """"full,comet" -> ["full", "comet"], each one of `allowed`."""
    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in allowed]
    if bad or not out:
        raise ValueError(f"bad {what} {', '.join(bad) or repr(text)}: choose from {', '.join(allowed)}")
    return list(dict.fromkeys(out))
