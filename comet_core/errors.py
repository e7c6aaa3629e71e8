"""One base class for every error a user can cause or fix (a missing file, a wrong model, a corrupt state).

Its message is one line meant for the user; the CLI prints it as `comet: error: <message>` and exits 1.
Anything else that escapes is a bug and is reported as an internal error.
"""

from __future__ import annotations


class CometError(Exception):
    """A user-facing error with a one-line message."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most `limit` characters (its type name if it has none)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"
