"""Would a wider search than greedy find the missed pass keys? For every pass key an adapter missed in a
folder written by docs/eval/answers.sh, the same sample is read again (the eval split is seeded) and the
right key and the greedy answer are scored as whole answers (their tokens and the end of the turn, in the
answer layout the CLI uses): summed log-probability of each, and at the first token where they part, the
probability and rank of the right digit. Where the right key scores higher, a beam search would find it;
where it scores lower, the memory does not hold it.

    python -m bench.passkey_likelihood docs/eval/r10-s190 [--adapter A] [--lengths 4096,16384]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import RESULTS, finish
from bench.passkey_errors import comet_rows
from comet_cli.values import parse_token_list
from comet_core.answer import prepare
from comet_core.engine import Engine, load
from comet_core.evaluate import make_cells
from comet_core.memory import MemoryState
from comet_core.prompt import end_of_turn_id, question_ids


@torch.no_grad()
def answer_dists(engine: Engine, state: MemoryState, question: str, answers: list[str]
                 ) -> list[tuple[list[int], torch.Tensor]]:
    """For each answer: its target ids (its tokens, then the end of the turn) and the log-probabilities
    [n_i + 1, V] the model gives at each of them after `question`, read from `state` in the adapter's
    answer layout (one forward of the live chunk per answer; the state's pending tail is flushed once)."""
    tok, model = engine.tok, engine.model
    st, prompt = prepare(model, state, question_ids(tok, question), model.cfg.priming)
    out = []
    for a in answers:
        target = tok.encode(a, add_special_tokens=False) + [end_of_turn_id(tok)]
        ids = torch.tensor([prompt + target], device=model.device)
        out.append((target, F.log_softmax(model.logits(model.live(st, ids)[0, len(prompt) - 1:-1]), dim=-1).cpu()))
    return out


def token_logprobs(target: list[int], logp: torch.Tensor) -> torch.Tensor:
    """The log-probabilities [n] of the target ids among their distributions logp [n, V]."""
    return logp[torch.arange(len(target)), target]


def answer_logprobs(engine: Engine, state: MemoryState, question: str, answers: list[str]) -> list[torch.Tensor]:
    """Per-token log-probabilities [n_i + 1] of each answer (see answer_dists)."""
    return [token_logprobs(*d) for d in answer_dists(engine, state, question, answers)]


def first_split(key: tuple[list[int], torch.Tensor], said: list[int]) -> dict:
    """At the first token where the key's target ids and `said`'s part: probability and rank of the key's
    token and probability of said's, from the key's distributions (the same prefix: the same forward)."""
    k_ids, logp = key
    i = next((j for j in range(min(len(k_ids), len(said))) if k_ids[j] != said[j]), None)
    if i is None:  # the same tokens: the answer was right after all
        return {"at": None, "p_key": 1.0, "p_said": 1.0, "rank_key": 1}
    p = logp[i].exp()
    return {"at": i, "p_key": float(p[k_ids[i]]), "p_said": float(p[said[i]]),
            "rank_key": int((p > p[k_ids[i]]).sum()) + 1}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder written by docs/eval/answers.sh")
    ap.add_argument("--model", help="a model folder (default: the shipped SmolLM2)")
    ap.add_argument("--adapter", help="default: the adapter named in the folder's JSON")
    ap.add_argument("--lengths", default="", help="only these lengths, in tokens (default: every length)")
    ap.add_argument("--json-out", type=Path, help=f"default: {RESULTS}/passkey_likelihood.json")
    args = ap.parse_args(argv)
    lengths = set(parse_token_list(args.lengths))
    if not any(args.folder.glob("passkey-*.json")):
        raise SystemExit(f"passkey_likelihood: no passkey-*.json in {args.folder}")
    misses = [(run, r, key) for run, r, key in comet_rows(args.folder)
              if float(r["acc"]) < 1.0 and (not lengths or r["length"] in lengths)]
    adapter = args.adapter or (misses[0][0]["adapter"] if misses else None)
    engine = load(args.model, misses[0][0]["precisions"][0], adapter) if misses else None
    rows = []
    for run, r, key in misses:
        cells = make_cells("passkey", engine.tok, [r["length"]], [r["depth"]], r["sample"] + 1, seed=run["seed"],
                           chunk_size=engine.model.cfg.chunk_size)
        s = cells[(r["length"], r["depth"])][r["sample"]]
        said = r["prediction"].strip()
        if s.answer != key:
            raise SystemExit(f"passkey_likelihood: sample {r['sample']} at {r['length']} is not the one measured")
        k, sd = answer_dists(engine, engine.read(s.context), s.question, [key, said])
        row = {"length": r["length"], "depth": r["depth"], "key": key, "said": said,
               "logp_key": float(token_logprobs(*k).sum()), "logp_said": float(token_logprobs(*sd).sum())}
        row |= first_split(k, sd[0])
        rows.append(row)
        print(f"{key:>8} said {said:<10} log p {row['logp_key']:7.2f} vs {row['logp_said']:7.2f}   at token "
              f"{row['at']}: p(key) {row['p_key']:.3f} rank {row['rank_key']}, p(said) {row['p_said']:.3f}",
              flush=True)
    better = sum(r["logp_key"] > r["logp_said"] for r in rows)
    print(f"{better} of {len(rows)} missed keys score higher than the greedy answer "
          f"(median p(key) where they part: {sorted(r['p_key'] for r in rows)[len(rows) // 2]:.3f})" if rows
          else "no missed keys")
    res = {"folder": str(args.folder), "adapter": str(adapter), "rows": rows, "key_higher": better,
           "geo_mean_p_key": math.exp(sum(math.log(max(r["p_key"], 1e-12)) for r in rows) / max(1, len(rows)))}
    finish(args.json_out, "passkey_likelihood.json", res)
    return res


if __name__ == "__main__":
    main()
