"""Why count questions fail: held-out count facts answered three ways from the same text, to tell a
wording problem from a memory problem.

- `eval`: the eval sample as it is ("According to the inventory, exactly 3474 crates of soap are stored in
  Lima."), the number stated once;
- `twice`: the same sentence followed by "That is 3474 crates." (the number stated twice, as pass keys are);
- `train`: the sentence replaced by a training wording ("the warehouse in Lima holds 3474 crates of soap.").

Each answer is scored like `comet eval`, and the digit count of every wrong numeric answer is listed
(a memory that keeps some digits and drops one answers "747" for 3474).

    python -m bench.count_probe --adapter checkpoints/r20/adapter.safetensors --samples 20 --tokens 256

~2 min at 256 tokens and 20 samples on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
from pathlib import Path

from bench.common import finish, machine
from comet_core.evaluate import answer_with_memory, load_system
from comet_core.tasks import score
from comet_core.tasks.generators import make_fact


def count_samples(tok, n_tokens: int, samples: int) -> list:
    """The first `samples` eval fact samples (seeds 0, 1, ...) that ask a count."""
    out, seed = [], 0
    while len(out) < samples:
        s = make_fact(tok, n_tokens, random.Random(f"count_probe:{seed}"), split="eval")
        seed += 1
        if s.meta["relation"] == "count":
            out.append(s)
    return out


def variants(s) -> dict[str, str]:
    """The sample's context as it is, with the number stated twice, and in a training wording."""
    f, needle = s.meta["fields"], s.meta["needle"]
    train = f"The warehouse in {f['city']} holds {f['n']} crates of {f['item']}."
    return {"eval": s.context, "twice": s.context.replace(needle, f"{needle} That is {f['n']} crates."),
            "train": s.context.replace(needle, train)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", default=None, help="backbone (default: the shipped SmolLM2)")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--precision", default="4bit")
    ap.add_argument("--json-out", type=Path, default=None, help="default: bench/results/count_probe.json")
    a = ap.parse_args(argv)
    engine = load_system("comet", a.model, a.precision, a.adapter)
    right: dict[str, int] = collections.Counter()
    digits: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    rows = []
    for s in count_samples(engine.tok, a.tokens, a.samples):
        for name, context in variants(s).items():
            pred = answer_with_memory(engine, context, s.question, 16)
            ok = score(s, pred)["acc"] == 1.0
            right[name] += ok
            if not ok:
                m = re.search(r"\d+", pred)
                digits[name][len(m.group()) if m else 0] += 1
            rows.append({"variant": name, "answer": s.answer, "prediction": pred, "acc": float(ok)})
    summary = {k: {"right": right[k], "of": a.samples, "wrong_by_digits": dict(sorted(digits[k].items()))}
               for k in ("eval", "twice", "train")}
    res = {"adapter": a.adapter, "tokens": a.tokens, "precision": a.precision, "summary": summary, "rows": rows}
    print("| variant | right | wrong answers by digits |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v['right']} of {v['of']} | {v['wrong_by_digits']} |")
    finish(a.json_out, "count_probe.json", {**res, "machine": machine()})
    return res


if __name__ == "__main__":
    main()
