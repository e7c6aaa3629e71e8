"""Does the answer's gradient reach what it has to train, and how big is it there?

One passkey sample (eval split, the key in the first chunk), read exactly as training reads it
(`trainer.batch_loss`, question-only live chunk), one backward of the answer loss. Printed:
- per context chunk, the gradient per token at its input embeddings (chunk 0 holds the key: its
  gradient arrives only through the memory of every later chunk), next to the live chunk's own;
- per layer, the gradient at the memory slots the live chunk reads (global and temp), and the gradient
  norms of that layer's memory nets and LoRA;
- the beacon embeddings' gradient.
A chunk whose gradient is many orders of magnitude below the live chunk's is one the answer cannot teach.

    python -m bench.grad_flow --adapter comet_core/adapters/smollm2.safetensors --chunks 4
"""

from __future__ import annotations

import argparse
import random

import torch


def measure(engine, chunks: int, seed: int = 0) -> dict:
    from comet_core.tasks import make_sample
    from comet_core.train.samples import encode
    from comet_core.train.trainer import batch_loss

    model, tok, c = engine.model, engine.tok, engine.model.cfg.chunk_size
    rng = random.Random(f"grad_flow:{seed}")
    sample = make_sample("passkey", tok, chunks * c - c // 4, rng, "eval", depth=0.1 / chunks)
    enc = encode(sample, tok, model.cfg, rng, priming=0)
    for p in model.mem.trainable().values():
        p.requires_grad_(True)
        p.grad = None
    bodies: list[torch.Tensor] = []
    mems: list[tuple[str, int, torch.Tensor]] = []
    phase = ["read"]
    embed_body, memory_at, live = model.embed_body, model.memory_at, model.live

    def embed_hook(ids, lay):
        x = embed_body(ids, lay)
        x.retain_grad()
        bodies.append(x)
        return x

    def memory_hook(l, gs, tq):
        m = memory_at(l, gs, tq)
        if m is not None and phase[0] == "live":
            m.retain_grad()
            mems.append(("live", l, m))
        return m

    def live_hook(*a, **kw):
        phase[0] = "live"
        return live(*a, **kw)

    model.embed_body, model.memory_at, model.live = embed_hook, memory_hook, live_hook
    try:
        loss, _ = batch_loss(model, [enc], grad_ckpt=False)
        (loss[0] / enc.n_target).backward()
    finally:
        del model.embed_body, model.memory_at, model.live  # back to the class methods
    per_token = [float(b.grad.norm(dim=-1).mean()) for b in bodies]  # context chunks..., live chunk
    g = model.cfg.n_global
    layers = []
    params = model.mem.trainable()
    for _, l, m in mems:
        gm, tm = m.grad[:, :g], m.grad[:, g:]

        def pnorm(prefix: str) -> float:
            gs = [p.grad for k, p in params.items() if k.startswith(prefix) and p.grad is not None]
            return float(torch.sqrt(sum((x.float() ** 2).sum() for x in gs))) if gs else 0.0

        layers.append({"layer": l, "global_slots": float(gm.norm(dim=-1).mean()),
                       "temp_slots": float(tm.norm(dim=-1).mean()) if tm.numel() else 0.0,
                       "global_net": pnorm(f"global_nets.{l}."), "temp_net": pnorm(f"temp_nets.{l}."),
                       "lora": pnorm(f"lora.{l}_")})
    special = params["special"].grad
    return {"loss": float(loss[0].detach() / enc.n_target), "chunks": [len(x) for x in enc.chunks],
            "embed_grad_per_token": per_token, "layers": layers,
            "beacon_grad": {"temp": float(special[0].norm()), "global": float(special[1:].norm(dim=-1).mean())}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--adapter", default="none", help="adapter file, or 'none' for a fresh memory")
    ap.add_argument("--precision", default="bf16", help="backbone precision (as training: bf16)")
    ap.add_argument("--chunks", type=int, default=4, help="context chunks read into memory")
    ap.add_argument("--chunk-size", type=int, default=256, help="c of a fresh memory")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from comet_core.config import CometConfig
    from comet_core.engine import load

    adapter = None if a.adapter == "none" else a.adapter
    engine = load(a.model, a.precision, adapter, threads=a.threads, trainable=True,
                  config=CometConfig(chunk_size=a.chunk_size, lora_rank=8))
    r = measure(engine, a.chunks)
    emb = r["embed_grad_per_token"]
    print(f"answer loss {r['loss']:.3f} nats/token; context chunks {r['chunks']} (the key is in chunk 0)")
    print("gradient per token at the input embeddings:")
    for i, x in enumerate(emb[:-1]):
        print(f"  chunk {i}: {x:.3e}  ({x / emb[-1]:.1e} of the live chunk's)")
    print(f"  live:    {emb[-1]:.3e}")
    print(f"beacon embeddings: temp {r['beacon_grad']['temp']:.3e}, global (mean per slot) "
          f"{r['beacon_grad']['global']:.3e}")
    print("layer  global slots  temp slots   global net   temp net     lora")
    for x in r["layers"]:
        print(f"{x['layer']:5d}  {x['global_slots']:.3e}     {x['temp_slots']:.3e}    {x['global_net']:.3e}    "
              f"{x['temp_net']:.3e}   {x['lora']:.3e}")
    return r


if __name__ == "__main__":
    main()
