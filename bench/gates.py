"""How long the global memory holds what it read: the gates of the global memory nets over a read.

At each chunk after the first, every layer's global state becomes g * state + (1 - g) * current, with one
gate g per slot (comet_core/memory.py). What a chunk wrote is multiplied by the product of the later
gates, so a slot with gate g keeps half of it for ln(0.5) / ln(g) chunks (its half-life). A passkey
read 15 chunks before the question survives in the global memory only where the gates stay near 1; the
temp queue holds just the last B_T / (c / s) chunks.

Reads real prose, records every gate, prints per chunk the mean gate and per layer the mean gate and its
half-life (from the mean of log g over slots and chunks), and the share of gates above 0.9.

    python -m bench.gates --adapter checkpoints/r1/adapter.safetensors --chunks 16     # ~20 s
"""

from __future__ import annotations

import argparse
import math

import torch

from bench import common as C


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(ap, precisions="bf16")
    ap.add_argument("--chunks", type=int, default=16, help="chunks read")
    a = ap.parse_args(argv)
    from comet_core.memory import GlobalMemoryNet

    warn = C.other_load()
    e = C.load_engine(C.model_params(a), a.precisions.split(",")[0])
    gates: list[torch.Tensor] = []  # one flattened [B*G] per (chunk, layer), in call order
    orig = GlobalMemoryNet.gate

    def gate(self, cur: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        g = orig(self, cur, state)
        gates.append(g.detach().float().flatten())
        return g

    GlobalMemoryNet.gate = gate
    try:
        with torch.no_grad():
            C.read(e.model, e.tok, e.model.cfg.chunk_size * a.chunks, C.prose_pieces(a.text, seed=3))
    finally:
        GlobalMemoryNet.gate = orig
    n_layers = e.model.n_layers
    g = torch.stack(gates).view(-1, n_layers, gates[0].numel())  # [chunks-1, layers, G]
    log_g = g.clamp_min(1e-6).log()

    def half_life(lg: torch.Tensor) -> float:
        m = lg.mean().item()
        return math.inf if m >= 0 else math.log(0.5) / m

    per_chunk = [round(x, 3) for x in g.mean(dim=(1, 2)).tolist()]
    rows = [[l, g[:, l].mean().item(), half_life(log_g[:, l]), (g[:, l] > 0.9).float().mean().item()]
            for l in range(n_layers)]
    C.print_table(f"global memory gates over {a.chunks} chunks (adapter {C.adapter_name(e)}, "
                  f"config {e.model.cfg.settings()})", ["layer", "mean gate", "half-life (chunks)", "gates > 0.9"],
                  rows)
    print(f"mean gate per chunk (from the 2nd): {per_chunk}")
    overall = {"mean_gate": g.mean().item(), "half_life_chunks": half_life(log_g),
               "share_above_0.9": (g > 0.9).float().mean().item()}
    print(f"all layers: mean gate {overall['mean_gate']:.3f}, half-life {overall['half_life_chunks']:.2f} chunks, "
          f"{overall['share_above_0.9']:.1%} of gates > 0.9")
    out = {"benchmark": "gates", "machine": C.machine(), "warning": warn, "adapter": C.adapter_name(e),
           "chunks": a.chunks, "per_chunk": per_chunk, "overall": overall,
           "layers": [dict(zip(["layer", "mean_gate", "half_life_chunks", "share_above_0.9"], r, strict=True))
                      for r in rows]}
    C.finish(a.json_out, "gates.json", out)
    return out


if __name__ == "__main__":
    main()
