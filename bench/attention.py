"""Attention kernels at comet's chunk shapes: torch's CPU flash kernel (what the engine uses, through
scaled_dot_product_attention with is_causal) against a plain masked-matmul attention (scores in fp32 or
bf16, causal mask, softmax in fp32), forward alone (reading) and forward + backward (training).

SmolLM2-135M's attention: 9 query heads, 3 key/value heads, head dim 64. A chunk has S positions:
385 at c = 256 and 673 at c = 512 (sink, memory slots, text, beacons); B samples per training step.

    python -m bench.attention          # ~1 min on 2 cores, nothing else running
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def masked_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [B, Hq, S, hd], k/v [B, Hkv, S, hd] -> [B, Hq, S, hd]: causal attention with materialised scores."""
    s, g = q.shape[2], q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).to(dtype), v.repeat_interleave(g, 1).to(dtype)
    scores = torch.matmul(q.to(dtype), k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, Hq, S, S]
    scores = scores + torch.full((s, s), float("-inf"), dtype=dtype).triu(1)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(dtype), v).to(q.dtype)


def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def timed(fn, reps: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="385x1,385x4,673x1,673x4", help="S x B pairs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default="bench/results/attention.json")
    a = ap.parse_args(argv)
    from .common import finish, machine, other_load

    torch.set_num_threads(a.threads)
    warn = other_load()
    kernels = {"flash": flash,
               "matmul fp32 scores": lambda q, k, v: masked_matmul(q, k, v, torch.float32),
               "matmul bf16 scores": lambda q, k, v: masked_matmul(q, k, v, torch.bfloat16)}
    rows = []
    for shape in a.shapes.split(","):
        s, b = (int(x) for x in shape.split("x"))
        q = torch.randn(b, 9, s, 64, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, 3, s, 64, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, 3, s, 64, dtype=torch.bfloat16, requires_grad=True)
        for name, fn in kernels.items():
            x = (q, k, v)
            with torch.no_grad():
                fwd = timed(lambda fn=fn, x=x: fn(*x), a.reps)
            both = timed(lambda fn=fn, x=x: fn(*x).float().sum().backward(), a.reps)
            rows.append({"S": s, "B": b, "kernel": name, "forward_ms": fwd * 1e3, "forward_backward_ms": both * 1e3})
            print(f"S {s:4d}  B {b}  {name:<19} forward {fwd * 1e3:7.1f} ms   forward+backward {both * 1e3:7.1f} ms",
                  flush=True)
    finish(Path(a.json_out), "attention.json", {"machine": machine(), "warning": warn, "args": vars(a), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
