"""Generation: time to the first answer token after a read, and decode tokens/s, at each precision.

One fresh child per precision: load, read N tokens of prose into memory, then ask a question twice
(the first call is "cold": first use of the 1-row kernels; the second is what a warm process sees).
The question is laid out as the CLI asks it (answer.prepare: the pending tail beyond the adapter's priming
length is read into memory first, inside the timed first token). Answers are decoded greedily for a fixed
number of tokens (stop tokens ignored), temp-beacon steps included in the wall time, as the CLI runs them.
The backbone's own greedy decode (plain transformers forward with a KV cache, as many positions as the
live chunk, no memory) is timed alongside for reference.

    python -m bench.generation                    # ~3 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench import common as C

QUESTION = "What is the main point of the text above? Answer in detail."


def timed_generate(comet, state, question: list[int], n_new: int, n_vocab: int) -> dict:
    """Answer `question` (ids) from `state` in the answer layout, timing from before the layout is prepared."""
    from comet_core.answer import prepare
    from comet_core.generate import generate

    t0 = time.perf_counter()
    times = []
    st, prompt = prepare(comet, state, question, comet.cfg.priming)
    for _ in generate(comet, st, prompt, max_new_tokens=n_new, stop_ids=(), n_vocab=n_vocab):
        times.append(time.perf_counter() - t0)
    n = len(times)
    return {"ttft_s": times[0], "new_tokens": n,
            "decode_tok_s": (n - 1) / (times[-1] - times[0]) if n > 1 else None}


def plain_decode(lm, prompt: list[int], n_new: int) -> dict:
    """Greedy decode of the backbone alone over the same prompt (no memory): prefill + per-token steps."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = lm(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
        ttft = time.perf_counter() - t0
        tok = int(out.logits[0, -1].argmax())
        t1 = time.perf_counter()
        for _ in range(n_new - 1):
            out = lm(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
            tok = int(out.logits[0, -1].argmax())
        dt = time.perf_counter() - t1
    return {"ttft_s": ttft, "decode_tok_s": (n_new - 1) / dt if n_new > 1 else None}


def child(p: dict) -> dict:
    from comet_core.answer import prepare
    from comet_core.prompt import question_ids

    e = C.load_engine(p, p["precision"])
    pieces = C.prose_pieces(Path(p["text"]) if p.get("text") else None, seed=1)
    C.warm_up(e.model, e.tok, pieces)
    r = C.read(e.model, e.tok, p["tokens"], pieces)
    question = question_ids(e.tok, QUESTION)
    cold = timed_generate(e.model, r.state, question, p["new_tokens"], len(e.tok))
    warm = timed_generate(e.model, r.state, question, p["new_tokens"], len(e.tok))
    st, prompt = prepare(e.model, r.state, question, e.model.cfg.priming)
    live = e.model.live_layout(st, len(prompt)).length
    out = {"precision": p["precision"], "read_tokens": r.tokens, "read_s": r.seconds, "prompt_tokens": len(prompt),
           "live_positions": live, "cold": cold, "warm": warm, "peak_rss_mb": C.peak_rss_mb()}
    if p.get("baseline", True):
        plain_prompt = C.token_chunks(e.tok, pieces, live)  # same number of positions as the live chunk
        plain_decode(e.lm, plain_prompt[:32], 4)  # warm-up
        out["plain"] = plain_decode(e.lm, plain_prompt, p["new_tokens"])
    return out


def main(argv: list[str] | None = None) -> dict | None:
    if C.child_main(argv, child):
        return None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit,8bit,bf16,fp32")
    ap.add_argument("--tokens", default="4k", help="text tokens read before the question")
    ap.add_argument("--new-tokens", type=int, default=64, help="answer tokens decoded (stop tokens ignored)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-transformers decode")
    a = ap.parse_args(argv)
    warn = C.other_load()
    t0 = time.time()
    rows = []
    for prec in [x for x in a.precisions.split(",") if x]:
        r = C.run_child("bench.generation", {**C.model_params(a), "precision": prec,
                                              "tokens": C.parse_size(a.tokens), "new_tokens": a.new_tokens,
                                              "baseline": not a.no_baseline})
        rows.append(r)
        print(f"{prec}: first token {r['warm']['ttft_s']:.2f} s, decode {r['warm']['decode_tok_s'] or 0:.1f} tok/s",
              flush=True)
    cols = ["precision", "read tokens", "prompt tokens", "live positions", "first token s (cold)",
            "first token s", "decode tok/s", "plain first token s", "plain decode tok/s", "peak RSS MiB"]
    C.print_table(f"Answering after a read ({a.new_tokens} tokens decoded greedily, {a.threads} threads)", cols,
                  [[r["precision"], r["read_tokens"], r["prompt_tokens"], r["live_positions"], r["cold"]["ttft_s"],
                    r["warm"]["ttft_s"], r["warm"]["decode_tok_s"], r.get("plain", {}).get("ttft_s"),
                    r.get("plain", {}).get("decode_tok_s"), r["peak_rss_mb"]] for r in rows])
    payload = {"benchmark": "generation", "machine": C.machine(), "warning": warn, "wall_s": time.time() - t0,
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "runs": rows}
    C.finish(a.json_out, "generation.json", payload)
    return payload


if __name__ == "__main__":
    main()
