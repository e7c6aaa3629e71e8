#!/usr/bin/env bash
# Summaries on the eval split: held-out passages of 384 and 896 tokens, asked for a summary in words the
# training never used, scored by token F1 against the summary SmolLM2 wrote with the whole passage in its
# window (the distillation target; `python scripts/make_summaries.py` makes them). Prints the F1 table and
# the first answers beside their targets.
#
#   bash docs/eval/summaries.sh ADAPTER OUTDIR [SYSTEMS]    # SYSTEMS: comet (default), or e.g. comet,full
#   SAMPLES=9 bash docs/eval/summaries.sh ...               # passages per length (default 10)
#
# ~3 min per system on the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
a=$1 o=$2 sys=${3:-comet}
mkdir -p "$o"
comet eval summary --adapter "$a" --lengths 384,896 --samples "${SAMPLES:-10}" --systems "$sys" --json \
  > "$o/summary.json" 2> "$o/summary.log"
python - "$o/summary.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("| system | length | F1 | n |\n|---|---|---|---|")
for r in d["summary"]:
    print(f"| {r['system']} | {r['length']:,} | {r['f1'] * 100:.1f} | {r['n']} |")
for r in d["rows"][:3]:
    print(f"\n{r['system']} {r['length']} #{r['sample'] + 1} (F1 {r['f1']:.2f})")
    print("  answer:", " ".join(r["prediction"].split())[:300])
    print("  target:", " ".join(r["answers"][0].split())[:300])
EOF
