"""Versus the hardware limit: this machine's dense matmul peak (torch, same threads) against the FLOPs comet
really executes per text token while reading, and the layout overhead.

1. Peak: the best of square bf16 / fp32 matmuls (1024..4096), and the same GEMMs at the shapes of one
   decoder layer at S rows (a full chunk), for dense bf16 / fp32 weights and bitsandbytes NF4 (its packed
   AVX512-BF16 kernel, and dequantise-then-bf16-matmul), and int8 x int8 -> int32 (`torch._int_mm`, oneDNN:
   VNNI / AMX-INT8 where the CPU has them) with the activations quantised per row at run time, as
   llama.cpp's Q4 x Q8 path does; its error against fp32 is printed beside bf16's.
2. FLOPs per text token (bench.common.flops_per_text_token, formula in its docstring): linears
   2 * P_layer * S/c per layer, causal attention 2 * 2 * d_attn * S(S+1)/2 / c, memory nets; no lm_head.
3. Achieved: comet reading N tokens at each precision, and the backbone over plain 512-token chunks;
   achieved FLOP/s / measured peak.

    python -m bench.hw_limit                      # ~3 min on a free 2-core CPU
"""

from __future__ import annotations

import argparse
import gc
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import common as C
from comet_core.reader import CPU_BLOCK

MIN_S = 0.4  # seconds per micro-benchmark (--min-seconds)


def bench_fn(fn, min_s: float | None = None, min_reps: int = 3) -> float:
    """Seconds per call of fn (after one warm-up call): total time / reps over at least min_s."""
    min_s = MIN_S if min_s is None else min_s
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_s:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...]) -> dict[int, float]:
    """GFLOP/s of n x n x n matmuls."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[n] = 2 * n**3 / bench_fn(partial(torch.mm, a, b)) / 1e9
    return out


def layer_shapes(lm) -> list[tuple[str, int, int]]:
    """(name, in, out) of the first decoder layer's linears."""
    return [(n.rsplit(".", 1)[-1], m.in_features, m.out_features) for n, m in lm.model.layers[0].named_modules()
            if hasattr(m, "in_features") and not list(m.children())]


def _dequant_linear(x: torch.Tensor, qweight: torch.Tensor, qs) -> torch.Tensor:
    import bitsandbytes.functional as bf

    return F.linear(x, bf.dequantize_4bit(qweight, qs).to(torch.bfloat16))


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W[out, in] -> (W_q^T [in, out] int8, per-output-row scale [out] fp32), symmetric absmax."""
    scale = w.float().abs().amax(1).clamp(min=1e-8) / 127
    return (w.float() / scale[:, None]).round().to(torch.int8).t(), scale


def int8_linear(x: torch.Tensor, wq_t: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x[rows, in] bf16 @ W^T with x quantised per row to int8 now, an int32 GEMM, then both scales."""
    x_scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127  # [rows, 1]
    xq = (x.float() / x_scale).round().to(torch.int8)
    return (torch._int_mm(xq, wq_t).float() * x_scale * w_scale).to(torch.bfloat16)  # [rows, out]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def kernel_table(shapes: list[tuple[str, int, int]], rows: int, with_4bit: bool) -> list[dict]:
    """GFLOP/s of x[rows, in] @ W[in, out] for each shape: bf16, fp32, int8 x int8 -> int32 with the
    activations quantised per row at run time (`int8 dyn-quant`) and the int8 GEMM alone (`int8 GEMM only`),
    NF4 packed kernel, NF4 dequant + bf16; and the relative errors of the bf16 and int8 products against fp32
    (`bf16 err`, `int8 err`)."""
    out = []
    with torch.no_grad():
        for name, k, n in shapes:
            flop = 2 * rows * k * n
            w, x = torch.randn(n, k) * 0.02, torch.randn(1, rows, k)
            wb, xb = w.bfloat16(), x.bfloat16()
            r = {"layer": name, "in": k, "out": n, "rows": rows,
                 "bf16": flop / bench_fn(partial(F.linear, xb, wb)) / 1e9,
                 "fp32": flop / bench_fn(partial(F.linear, x, w)) / 1e9}
            x2 = xb[0]  # [rows, in]
            wq_t, w_scale = int8_weight(wb)
            xq = torch.randint(-127, 128, (rows, k), dtype=torch.int8)
            ref = F.linear(x2.float(), wb.float())
            r["int8 dyn-quant"] = flop / bench_fn(partial(int8_linear, x2, wq_t, w_scale)) / 1e9
            r["int8 GEMM only"] = flop / bench_fn(partial(torch._int_mm, xq, wq_t)) / 1e9
            r["bf16 err"] = rel_err(F.linear(x2, wb), ref)
            r["int8 err"] = rel_err(int8_linear(x2, wq_t, w_scale), ref)
            if with_4bit and n % 32 == 0:
                import bitsandbytes as bnb
                import bitsandbytes.functional as bf

                p = bnb.nn.Params4bit(wb, requires_grad=False, quant_type="nf4", compress_statistics=True)
                p = p._quantize("cpu")
                r["nf4 dequant+bf16"] = flop / bench_fn(partial(_dequant_linear, xb, p.data, p.quant_state)) / 1e9
                r["nf4 dequant only ms"] = bench_fn(partial(bf.dequantize_4bit, p.data, p.quant_state)) * 1e3
                lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").eval()
                lin.weight = p  # repacked for the AVX512-BF16 kernel on the first no-grad forward
                r["nf4 bnb kernel"] = flop / bench_fn(partial(lin, xb)) / 1e9
            out.append(r)
    return out


def measure_reading(p: dict, prec: str, n_tokens: int, block: int) -> dict:
    e = C.load_engine(p, prec)
    pieces = C.prose_pieces(Path(p["text"]) if p.get("text") else None, seed=1)
    C.warm_up(e.model, e.tok, pieces, block)
    r = C.read(e.model, e.tok, n_tokens, pieces, block=block)
    fl = C.flops_per_text_token(e.model)
    out = {"precision": prec, "block": block, "tokens": r.tokens, "seconds": r.seconds, "tok_s": r.tok_s,
           "flops_per_text_token": fl["flops_per_text_token"], "gflops": fl["flops_per_text_token"] * r.tok_s / 1e9,
           "layout": fl, "config": e.model.cfg.settings(), "adapter": C.adapter_name(e)}
    del e
    gc.collect()
    return out


def measure_dense(p: dict, prec: str, chunk: int = 512, n_chunks: int = 16) -> dict:
    e = C.load_engine(p, prec, memory=False)
    pieces = C.prose_pieces(Path(p["text"]) if p.get("text") else None, seed=2)
    r = C.dense_rate(e.lm, e.tok, pieces, n_chunks=n_chunks, chunk=chunk)
    fpt = C.plain_flops_per_token(e.lm, chunk)
    shapes = layer_shapes(e.lm)
    del e
    gc.collect()
    return {"precision": prec, **r, "flops_per_token": fpt, "gflops": fpt * r["tok_s"] / 1e9, "shapes": shapes}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="4bit,bf16")
    ap.add_argument("--tokens", default="32k", help="text tokens read per precision (after a warm-up)")
    ap.add_argument("--block", type=int, default=CPU_BLOCK,
                    help="chunks per layer-major block (default: the CLI's on a CPU)")
    ap.add_argument("--sizes", default="1024,2048,4096", help="square matmul sizes for the peak")
    ap.add_argument("--dense-chunks", type=int, default=16)
    ap.add_argument("--min-seconds", type=float, default=0.4, help="time per micro-benchmark")
    a = ap.parse_args(argv)
    global MIN_S
    MIN_S = a.min_seconds
    torch.set_num_threads(a.threads)
    warn = C.other_load()
    p = C.model_params(a)
    precs = [x for x in a.precisions.split(",") if x]
    sizes = tuple(int(x) for x in a.sizes.split(","))
    t0 = time.time()

    peak = {"bf16": matmul_peak(torch.bfloat16, sizes), "fp32": matmul_peak(torch.float32, sizes)}
    best = {k: max(v.values()) for k, v in peak.items()}
    C.print_table(f"Dense matmul, n x n x n, {a.threads} threads (GFLOP/s)", ["n", "bf16", "fp32"],
                  [[n, peak["bf16"][n], peak["fp32"][n]] for n in sizes])

    dense = measure_dense(p, "bf16", n_chunks=a.dense_chunks)
    reads = [measure_reading(p, prec, C.parse_size(a.tokens), a.block) for prec in precs]
    lay = reads[0]["layout"]
    kernels = kernel_table(dense["shapes"], lay["S"], with_4bit="4bit" in precs)
    cols = ["layer", "in", "out", "rows", "bf16", "fp32", "int8 dyn-quant", "int8 GEMM only", "bf16 err",
            "int8 err"] + (["nf4 bnb kernel", "nf4 dequant+bf16",
                                                              "nf4 dequant only ms"] if "4bit" in precs else [])
    C.print_table(f"One decoder layer's GEMMs at S = {lay['S']} rows (GFLOP/s)", cols,
                  [[k.get(c) for c in cols] for k in kernels])

    C.print_table(f"Layout of a full chunk (steady state), config {reads[0]['config']}",
                  ["sink", "text c", "temp beacons", "global slots", "temp slots", "global beacons", "S", "S/c",
                   "FLOPs/text token", "plain c-chunk FLOPs/token", "FLOP overhead"],
                  [[lay["sink"], lay["text"], lay["temp_beacons"], lay["global_slots"], lay["temp_slots"],
                    lay["global_beacons"], lay["S"], lay["overhead_S_over_c"],
                    f"{lay['flops_per_text_token'] / 1e6:.1f} M", f"{lay['plain_flops_per_token'] / 1e6:.1f} M",
                    lay["flop_overhead_vs_plain"]]])
    print(f"FLOPs per text token: linears {lay['flops_linear'] / 1e6:.1f} M + attention "
          f"{lay['flops_attention'] / 1e6:.1f} M + memory nets {lay['flops_memory_nets'] / 1e6:.2f} M")

    rows = [["backbone, plain 512-token chunks", "bf16", dense["tok_s"], dense["gflops"],
             dense["gflops"] / best["bf16"], None]]
    for r in reads:
        ref = best["fp32"] if r["precision"] == "fp32" else best["bf16"]
        rows.append([f"comet reading (block {r['block']})", r["precision"], r["tok_s"], r["gflops"], r["gflops"] / ref,
                     r["tok_s"] / dense["tok_s"]])
    C.print_table(f"Achieved vs peak (bf16 peak {best['bf16']:.0f}, fp32 peak {best['fp32']:.0f} GFLOP/s)",
                  ["what", "precision", "text tokens/s", "GFLOP/s", "of matmul peak", "of dense bf16 tok/s"], rows)
    four = next((r for r in reads if r["precision"] == "4bit"), None)
    if four:
        frac = four["gflops"] / best["bf16"]
        print(f"target >= 50% of the matmul peak at 4bit: {C.verdict(frac >= 0.5)} ({frac:.0%})")
    payload = {"benchmark": "hw_limit", "machine": C.machine(), "warning": warn, "wall_s": time.time() - t0,
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
               "matmul_peak_gflops": peak, "best_peak_gflops": best, "kernels": kernels, "dense": dense,
               "reading": reads}
    C.finish(a.json_out, "hw_limit.json", payload)
    return payload


if __name__ == "__main__":
    main()
