#!/usr/bin/env bash
# The reading-speed measurements, in one go on a quiet machine (nothing else running; the script prints the
# load first): comet's reading speed and flatness at 4bit (16k / 64k / 256k), the hardware-limit table
# (GEMM kernels incl. int8, achieved vs peak) and llama.cpp's prompt processing on the same GGUF
# (skipped, and said so, when llama-cpp-python is not installed). Results go to bench/results/ with the
# suffix given (e.g. the machine's name), so figures of different machines sit side by side.
#
#   bash bench/quiet_run.sh xeon-amx                       # ~15 min on 2 cores
#   LENGTHS=16k,64k bash bench/quiet_run.sh xeon-amx       # ~8 min (no 256k read)
#   LLAMACPP_ARGS=--no-extra-bufts bash bench/quiet_run.sh xeon-amx   # where ggml's AMX path dies (SIGILL)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?give a suffix for the result files, e.g. the machine}
r=bench/results
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
python -m bench.scaling --precisions 4bit --lengths "${LENGTHS:-16k,64k,256k}" --json-out "$r/scaling-$tag.json" \
    --plot "$r/scaling-$tag.png" 2>&1 | tee "$r/scaling-$tag.log"
python -m bench.llamacpp --scaling "$r/scaling-$tag.json" ${LLAMACPP_ARGS:-} --json-out "$r/llamacpp-$tag.json" 2>&1 \
    | tee "$r/llamacpp-$tag.log"
python -m bench.hw_limit --precisions 4bit --tokens 16k --json-out "$r/hw_limit-$tag.json" 2>&1 | tee "$r/hw_limit-$tag.log"
