"""The trainer's held-out evaluation, for any adapter at any precision: generated answers to the same
eval-split samples `comet train` scores every --eval-every steps (eval.jsonl), so an adapter's training-time
figures can be read at another precision, or two adapters compared on the samples the curve was drawn on.

    python -m bench.heldout --adapters checkpoints/r8/adapter.safetensors --precisions 4bit,bf16
    python -m bench.heldout --adapters A,B --tasks passkey,fact --tokens 1024 --samples 20

Prints one line per (adapter, precision): accuracy per task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import common as C


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True, help="adapter files, comma-separated")
    ap.add_argument("--precisions", default="4bit", help="backbone precisions, comma-separated")
    ap.add_argument("--tasks", default="passkey,fact", help="tasks (the trainer's gated ones: passkey, fact)")
    ap.add_argument("--tokens", type=int, default=1024, help="context tokens (the trainer's: level x chunk size)")
    ap.add_argument("--samples", type=int, default=20, help="samples per task (the trainer's --eval-samples)")
    ap.add_argument("--model", default=None, help="base model (default: smollm2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=None, help="default: bench/results/heldout.json")
    a = ap.parse_args(argv)

    from comet_core.evaluate import heldout_accuracy, load_system

    rows = []
    for adapter in a.adapters.split(","):
        for precision in a.precisions.split(","):
            engine = load_system("comet", a.model, precision, adapter, threads=a.threads)
            acc = {t: heldout_accuracy(engine, t, a.tokens, a.samples)[0] for t in a.tasks.split(",")}
            rows.append({"adapter": adapter, "precision": precision, "tokens": a.tokens, "samples": a.samples,
                         **acc})
            print(json.dumps(rows[-1]), flush=True)
    res = {"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows}
    C.finish(a.json_out, "heldout.json", res)
    return res


if __name__ == "__main__":
    main()
