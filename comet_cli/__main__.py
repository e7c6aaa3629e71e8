"""`python -m comet_cli` = the `comet` command."""

from .main import main

main()
