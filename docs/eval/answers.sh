#!/usr/bin/env bash
# Generated answers on the eval split (held-out text and wordings), the measure of "memory that answers":
# passkey and fact at the lengths the training reached (256 to 1k tokens) and at 4k / 16k (20 and 10
# samples over 5 depths), why a job failed in a service log at 4k / 16k, then the app-log question. Prints
# one table at the end, and how the fact questions with eval-only values (cities, jobs, pet names training
# never shows) were answered.
#
#   bash docs/eval/answers.sh ADAPTER OUTDIR [SYSTEMS]      # SYSTEMS: comet (default), or e.g. comet,full
#
# ~20 min for comet alone on the 2-core CPU; full attention adds ~15 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
a=$1 o=$2 sys=${3:-comet}
mkdir -p "$o"
run() {  # name, then comet eval arguments
  local name=$1; shift
  comet eval "$@" --adapter "$a" --depths 0,0.25,0.5,0.75,1 --systems "$sys" --json > "$o/$name.json" 2> "$o/$name.log"
}
run passkey-short passkey --lengths 256,512,1k --samples 4
run passkey-4k passkey --lengths 4k --samples 4
run passkey-16k passkey --lengths 16k --samples 2
run fact-short fact --lengths 256,512,1k --samples 4
run fact-4k fact --lengths 4k --samples 4
run fact-16k fact --lengths 16k --samples 2
run incident-4k incident --lengths 4k --samples 4
run incident-16k incident --lengths 16k --samples 2
comet ask --adapter "$a" samples/app.log "Why did the nightly job fail?" > "$o/ask-app-log.txt" 2> "$o/ask-app-log.log"
if [[ ,$sys, == *,full,* ]]; then  # the same question with the whole log in the model's window
  python -c 'import sys; from comet_core import evaluate as ev; e = ev.load_system("full", None, "4bit", None)
print(ev.answer_full_attention(e.lm, e.tok, open("samples/app.log").read(), sys.argv[1], ev.window(e), 64))' \
    "Why did the nightly job fail?" > "$o/ask-app-log-full.txt" 2>> "$o/ask-app-log.log"
fi
python - "$o" <<'EOF'
import json, pathlib, sys
o = pathlib.Path(sys.argv[1])
cells = {}
for f in sorted(o.glob("*.json")):
    for r in json.loads(f.read_text())["summary"]:
        if r["depth"] == "all":
            cells[(r["task"], r["system"], r["length"])] = (r["acc"], r["n"])
lengths = sorted({k[2] for k in cells})
print("| task | system | " + " | ".join(f"{n:,}" for n in lengths) + " |")
print("|---|---|" + "---|" * len(lengths))
for task, system in sorted({k[:2] for k in cells}):
    row = [f"{cells[(task, system, n)][0]:.0%} of {cells[(task, system, n)][1]}" if (task, system, n) in cells
           else "-" for n in lengths]
    print(f"| {task} | {system} | " + " | ".join(row) + " |")
print("\ncomet ask samples/app.log 'Why did the nightly job fail?' ->", (o / "ask-app-log.txt").read_text().strip())
if (o / "ask-app-log-full.txt").exists():
    print("the same, full attention ->", (o / "ask-app-log-full.txt").read_text().strip())
EOF
echo
python -m bench.fact_errors "$o"  # facts whose value training never shows: right, and wrong with a training value
