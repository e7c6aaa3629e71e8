"""Benchmarks for comet (see bench/README.md); run as `python -m bench.<name>` from the repo root."""
