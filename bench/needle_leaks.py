"""How often does a training needle land in the live chunk, where plain attention answers it with no memory?

Draws samples exactly as `comet train` does (`trainer.draw`) and counts those whose answer can be read in
the live chunk's text before the question: the passkey itself, or the last three words of a recall
answer (if its end is in memory, all of it is). With `--in-memory 0` the needles go at any depth. Only a
priming length above 0 keeps text live (answer.py); with 0 (the default) every needle is in memory.

    python -m bench.needle_leaks --in-memory 0,1 --priming 512
"""

from __future__ import annotations

import argparse
import random


def leaks(in_memory: float, task: str, levels: list[int], tok, cfg, seed: int = 0, random_plan: float = 0.2,
          priming: int = 0) -> int:
    """How many of the samples (one per entry of `levels`) show their answer in the live text. A common
    three-word phrase that also occurs in the live text counts too, so this can over-count recall."""
    from comet_core.train.trainer import Curriculum, TrainArgs, draw

    args = TrainArgs(in_memory=in_memory, tasks=f"{task}:1", short_share=0.0, random_plan=random_plan,
                     priming=priming)
    rng, n = random.Random(seed), 0
    for level in levels:
        (d,) = draw(args, Curriculum(level, 16, 0.8, 24), rng, args.task_weights(), tok, cfg, 1)
        enc = d.enc
        text = tok.decode(enc.live[:-enc.n_target]).split("<|im_start|>")[0]  # the context's tail
        answer = tok.decode(enc.live[-enc.n_target:-1])  # without the end-of-turn token
        n += (answer if task == "passkey" else " ".join(answer.split()[-3:])) in text
    return n


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--in-memory", default="0,1", help="shares to compare")
    ap.add_argument("--levels", default="2,4", help="curriculum levels (context chunks)")
    ap.add_argument("--samples", type=int, default=40, help="per task and level")
    ap.add_argument("--priming", type=int, default=0, help="text tokens kept live before the question")
    a = ap.parse_args(argv)
    from comet_core.config import CometConfig
    from comet_core.engine import load

    tok, cfg = load(a.model, "bf16", memory=False).tok, CometConfig()
    rows = []
    for share in (float(x) for x in a.in_memory.split(",")):
        for level in (int(x) for x in a.levels.split(",")):
            for task in ("passkey", "recall"):
                n = leaks(share, task, [level] * a.samples, tok, cfg, priming=a.priming)
                rows.append({"in_memory": share, "level": level, "task": task, "live": n, "samples": a.samples})
                print(f"in-memory {share:.1f}  level {level}  {task:8} answer in the live chunk: {n}/{a.samples}")
    return rows


if __name__ == "__main__":
    main()
