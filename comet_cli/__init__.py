"""comet_cli: the `comet` command line."""
