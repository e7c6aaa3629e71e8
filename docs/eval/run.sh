#!/usr/bin/env bash
# The evaluation in docs/evaluation.md (2-core CPU, ~20 min idle). Rerun: bash docs/eval/run.sh [ADAPTER]
# ADAPTER defaults to the shipped comet_core/adapters/smollm2.safetensors.
set -euo pipefail
cd "$(dirname "$0")/../.."
o=docs/eval
a=()
[ $# -ge 1 ] && a=(--adapter "$1")
comet eval passkey "${a[@]}" --lengths 4k,16k --depths 0,0.25,0.5,0.75,1 --out $o/passkey-4bit.png --json > $o/passkey-4bit.json 2> $o/passkey-4bit.log
comet eval passkey "${a[@]}" --lengths 64k --depths 0.5 --systems comet,full --json > $o/passkey-64k-4bit.json 2> $o/passkey-64k-4bit.log
comet eval passkey "${a[@]}" --lengths 4k --depths 0,0.5,1 --systems comet --precision bf16 --json > $o/passkey-bf16.json 2> $o/passkey-bf16.log
comet eval needle-qa "${a[@]}" --lengths 4k,16k --depths 0.5 --samples 5 --systems comet,full --json > $o/needle-4bit.json 2> $o/needle-4bit.log
comet eval lm "${a[@]}" --lengths 4k --samples 3 --json > $o/lm-4bit.json 2> $o/lm-4bit.log
