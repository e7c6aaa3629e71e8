"""Does the memory keep a value stated before what it belongs to? Held-out fact samples answered from the
same text with the fact's sentence reworded, to tell a wording or word-order problem from a memory one.
The eval sentences of counts and pets put the value first ("3474 crates of soap are stored in Lima",
"Dumpling is the name of the cat that Ann Berg adopted"), the other relations put it last.

`--relation count`:
- `eval`: the eval sentence as it is ("According to the inventory, exactly 3474 crates of soap are stored
  in Lima."), the number stated once;
- `twice`: the same sentence followed by "That is 3474 crates." (the number stated twice, as pass keys are);
- `train`: a training wording ("The warehouse in Lima holds 3474 crates of soap.");
- `no_exactly`, `no_opener`: the eval sentence less "exactly", or less "According to the inventory, exactly"
  ("3474 crates of soap are stored in Lima.");
- `city_first`: eval words with the city before the number ("According to the inventory, Lima stores
  exactly 3474 crates of soap.").

`--relation pet`: `eval` as it is, and `owner_first` ("Ann Berg adopted a cat last spring and gave it the
name Dumpling.").

Each answer is scored like `comet eval`; for each wrong answer, the digits of its first number (0: none;
a memory that keeps some digits and drops one answers "747" for 3474).

    python -m bench.order_probe --adapter checkpoints/r20/adapter.safetensors --relation count --samples 20

~20 s per variant at 256 tokens and 20 samples on the 2-core CPU.
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


def fact_samples(tok, relation: str, n_tokens: int, samples: int) -> list:
    """The first `samples` eval fact samples (seeds 0, 1, ...) that ask `relation`."""
    out, seed = [], 0
    while len(out) < samples:
        s = make_fact(tok, n_tokens, random.Random(f"count_probe:{seed}"), split="eval")  # the first runs' seeds
        seed += 1
        if s.meta["relation"] == relation:
            out.append(s)
    return out


def count_variants(f: dict, needle: str) -> dict[str, str]:
    """The count sentence as it is, with the number stated twice, in a training wording, less its
    "exactly" or its whole opener ("According to the inventory, exactly "), and in eval words with the
    city before the number."""
    n, city, item = f["n"], f["city"], f["item"]
    return {"eval": needle, "twice": f"{needle} That is {n} crates.",
            "train": f"The warehouse in {city} holds {n} crates of {item}.",
            "no_exactly": needle.replace("exactly ", ""),
            "no_opener": needle.replace("According to the inventory, exactly ", ""),  # starts with the number
            "city_first": f"According to the inventory, {city} stores exactly {n} crates of {item}."}


def pet_variants(f: dict, needle: str) -> dict[str, str]:
    """The pet sentence as it is (the name first: "Dumpling is the name of the cat that Ann Berg adopted
    last spring.") and in eval words with the owner first."""
    return {"eval": needle,
            "owner_first": f"{f['name']} adopted a {f['pet']} last spring and gave it the name {f['pet_name']}."}


RELATIONS = {"count": count_variants, "pet": pet_variants}


def _digits(prediction: str) -> int:
    """Digits of the answer's first number (0: none)."""
    m = re.search(r"\d+", prediction)
    return len(m.group()) if m else 0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", default=None, help="backbone (default: the shipped SmolLM2)")
    ap.add_argument("--relation", choices=sorted(RELATIONS), default="count")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--precision", default="4bit")
    ap.add_argument("--json-out", type=Path, default=None, help="default: bench/results/order_probe-RELATION.json")
    a = ap.parse_args(argv)
    engine = load_system("comet", a.model, a.precision, a.adapter)
    rows = []
    for s in fact_samples(engine.tok, a.relation, a.tokens, a.samples):
        for name, needle in RELATIONS[a.relation](s.meta["fields"], s.meta["needle"]).items():
            pred = answer_with_memory(engine, s.context.replace(s.meta["needle"], needle), s.question, 16)
            rows.append({"variant": name, "answer": s.answer, "prediction": pred,
                         "acc": float(score(s, pred)["acc"] == 1.0)})
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        wrong = collections.Counter(_digits(r["prediction"]) for r in mine if not r["acc"])
        summary[name] = {"right": int(sum(r["acc"] for r in mine)), "of": len(mine),
                         "wrong_by_digits": dict(sorted(wrong.items()))}
    res = {"adapter": a.adapter, "relation": a.relation, "tokens": a.tokens, "precision": a.precision,
           "summary": summary, "rows": rows}
    print("| variant | right | wrong answers by digits |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v['right']} of {v['of']} | {v['wrong_by_digits']} |")
    finish(a.json_out, f"order_probe-{a.relation}.json", {**res, "machine": machine()})
    return res


if __name__ == "__main__":
    main()
