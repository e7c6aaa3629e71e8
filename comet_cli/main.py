"""The `comet` command (placeholder until the CLI lands: --version and --help)."""

import click

from comet_core import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="comet")
def cli() -> None:
    """Read documents of any length through a small LLM with CoMeT memory."""
