#!/usr/bin/env bash
# Choose the blend weight t on the training split (never on the eval split that answers.sh reports):
# for each t, blend r12 (shipped until r17) with the adapter B_ADAPTER (scripts/blend_adapters.py), then pass keys,
# facts and incidents at 4k tokens, 20 samples each, drawn as the training draws them (--split train).
#
#   bash docs/eval/blend/screen.sh B_ADAPTER OUTDIR T [T ...]     # ~4 min per t on the 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/../../.."
b=$1 o=$2; shift 2
mkdir -p "$o"
for t in "$@"; do
  a="$o/blend-t$t.safetensors"
  python scripts/blend_adapters.py checkpoints/r12/adapter.safetensors "$b" "$t" "$a" >&2
  for task in passkey fact incident; do
    comet eval "$task" --split train --lengths 4k --samples 4 --depths 0,0.25,0.5,0.75,1 --systems comet \
      --adapter "$a" --json > "$o/t$t-$task-4k-train.json" 2> "$o/t$t-$task-4k-train.log"
  done
  rm -f "$a"
  python - "$o" "$t" <<'PY'
import json, sys
o, t = sys.argv[1], sys.argv[2]
cells = []
for task in ("passkey", "fact", "incident"):
    s = [r for r in json.load(open(f"{o}/t{t}-{task}-4k-train.json"))["summary"] if r["depth"] == "all"][0]
    cells.append(f"{task} {s['acc']:.0%} of {s['n']}")
print(f"t = {t}: " + ", ".join(cells))
PY
done
