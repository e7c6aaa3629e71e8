#!/usr/bin/env bash
# Every benchmark the README quotes, in order, on an otherwise idle machine (~60 min on 2 cores, with 1M).
# Usage: bench/run_all.sh [--no-1m]       Logs: bench/results/*.log
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
if [ "$(cut -d' ' -f1 /proc/loadavg | cut -d. -f1)" -ge 1 ]; then
    echo "warning: load average $(cut -d' ' -f1 /proc/loadavg): other processes share the CPU" >&2
fi
run() { local name=$1; shift; echo "== $name: $*"; python -m "bench.$name" "$@" 2>&1 | tee "bench/results/$name.log"; }
run hw_limit                                                    # ~3 min
run profile_read --precisions 4bit,bf16 --chunks 16             # ~2 min
run experiments                                                 # ~5 min
run tradeoff                                                    # ~4 min
run generation                                                  # ~4 min
run vs_full_attention                                           # ~5 min
if [ "${1:-}" = "--no-1m" ]; then
    run scaling                                                 # ~14 min
else
    run scaling --with-1m --precisions 4bit,bf16                # ~50 min (1M: ~17 min per precision)
fi
run llamacpp                                                    # skips unless llama-cpp-python is installed
