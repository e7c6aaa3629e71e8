"""Memory settings vs speed: reading rate, layout overhead and state size for several (c, s, G, B_T).

The backbone is loaded once; each setting gets a fresh untrained memory (speed does not depend on the
weights' values), a warm-up, then reads the same text. Quality is not measured here: put these numbers
next to the accuracy of the trained settings (issue "Teach the memory") to choose.

    python -m bench.tradeoff --configs 256/8/16/64,512/8/16/64,1024/8/16/64,512/8/32/128,512/16/16/64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import common as C
from comet_core.reader import CPU_BLOCK


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit")
    ap.add_argument("--configs", default="256/8/16/64,512/8/16/64,1024/8/16/64,512/8/32/128,512/16/16/64,"
                                          "512/8/64/256", help="c/s/G/B_T, comma separated")
    ap.add_argument("--tokens", default="16k", help="text tokens per setting")
    ap.add_argument("--block", type=int, default=CPU_BLOCK,
                    help="chunks per layer-major block (default: the CLI's on a CPU)")
    a = ap.parse_args(argv)
    from comet_core.config import CometConfig
    from comet_core.model import CometModel

    warn = C.other_load()
    p = C.model_params(a)
    n = C.parse_size(a.tokens)
    text = Path(a.text) if a.text else None
    out = {"benchmark": "tradeoff", "machine": C.machine(), "warning": warn,
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "runs": []}
    t0 = time.time()
    for prec in [x for x in a.precisions.split(",") if x]:
        e = C.load_engine(p, prec, memory=False)
        rows = []
        for spec in a.configs.split(","):
            c, s, g, b = (int(x) for x in spec.split("/"))
            comet = CometModel.create(e.lm, CometConfig(chunk_size=c, stride=s, n_global=g, budget=b))
            C.warm_up(comet, e.tok, C.prose_pieces(text, seed=9), a.block)
            r = C.read(comet, e.tok, n, C.prose_pieces(text, seed=1), block=a.block)
            fl = C.flops_per_text_token(comet)
            row = {"precision": prec, "c": c, "s": s, "G": g, "B_T": b, "S": fl["S"],
                   "S_over_c": fl["overhead_S_over_c"], "mflops_per_token": fl["flops_per_text_token"] / 1e6,
                   "tok_s": r.tok_s, "state_mib": r.state_bytes / C.MiB, "tokens": r.tokens}
            rows.append(row)
            print(f"{prec} {spec}: {r.tok_s:,.0f} tok/s", flush=True)
        C.print_table(f"{prec}: memory settings vs reading speed ({n:,} tokens each, block {a.block})",
                      ["c/s/G/B_T", "S", "S/c", "MFLOP/text token", "tokens/s", "state MiB"],
                      [[f"{r['c']}/{r['s']}/{r['G']}/{r['B_T']}", r["S"], r["S_over_c"], r["mflops_per_token"],
                        r["tok_s"], r["state_mib"]] for r in rows])
        out["runs"] += rows
        del e
    out["wall_s"] = time.time() - t0
    C.finish(a.json_out, "tradeoff.json", out)
    return out


if __name__ == "__main__":
    main()
