"""Where does a passkey get lost: writing it into memory, or reading it back?

Two passkey samples that differ only in the key (same filler, same depth, the key in memory) are read.
1. write: per layer, how much the memory state differs between the two (the temp-queue entry with the
   largest difference should be the beacon right after the key), relative to an entry's norm;
2. read: how much the live chunk's hidden states at the question differ (relative);
3. learn: a short fine-tune on N such samples (N keys, nothing else differs). A model that cannot read
   its memory can only learn the set of keys, so its answer loss floors at ln(N) / answer tokens (the
   first digit is a guess among N, the rest follows); a model that reads goes below the floor.

    python -m bench.memory_probe --adapter comet_core/adapters/smollm2.safetensors --steps 40
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from comet_cli.plot import pyplot, save

KEYS = ("48213", "90577", "31649", "76402", "15938", "62084", "83751", "27460")


def samples(tok, cfg, n_keys: int, length: int, depth: float, seed: int):
    from comet_core.tasks import Sample, make_sample
    from comet_core.train.samples import encode

    base = make_sample("passkey", tok, length, random.Random(seed), "eval", depth=depth)
    out = []
    for k in KEYS[:n_keys]:
        s = Sample(base.context.replace(base.answer, k), base.question, k, "passkey")
        out.append(encode(s, tok, cfg, random.Random(0), n_ctx=length))  # exactly `length` tokens in memory
    return out


def write_read(model, a, b) -> dict:
    from comet_core.memory import MemoryState

    runs = []
    with torch.no_grad():
        for e in (a, b):
            st, _ = model.read(MemoryState.empty(model.n_layers), [torch.tensor([c]) for c in e.chunks])
            runs.append((st, model.live(st, torch.tensor([e.live]))[0].float()))  # [p, d]
    (sa, ha), (sb, hb) = runs
    layers = []
    for l in range(model.n_layers):
        ta, tb = sa.temp[l][0].float(), sb.temp[l][0].float()  # [T, d]
        diff = (ta - tb).norm(dim=-1)
        ga, gb = sa.global_state[l][0].float(), sb.global_state[l][0].float()
        layers.append({"layer": l, "temp_entry": int(diff.argmax()),
                       "temp_rel": float(diff.max() / ta.norm(dim=-1).mean()),
                       "global_rel": float(((ga - gb).norm(dim=-1) / ga.norm(dim=-1)).max())})
    q = slice(len(a.live) - a.n_target - 8, len(a.live) - a.n_target)  # the question's last 8 tokens
    read = float(((ha[q] - hb[q]).norm(dim=-1) / ha[q].norm(dim=-1)).mean())
    return {"layers": layers, "read_rel": read}


def learn(model, encs, steps: int, lr: float, lora_lr: float) -> list[float]:
    from comet_core.train.trainer import TrainArgs, _optimizer, sample_loss

    opt = _optimizer(model, TrainArgs(lr=lr, lora_lr=lora_lr))
    params = list(model.mem.trainable().values())
    curve = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        half = len(encs) // 2
        batch = encs[:half] if step % 2 == 0 else encs[half:]
        total = 0.0
        for e in batch:
            loss, _ = sample_loss(model, e, grad_ckpt=False)
            (loss / (e.n_target * len(batch))).backward()
            total += loss.item() / (e.n_target * len(batch))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append(total)
        print(f"step {step + 1}/{steps} loss {total:.3f}", flush=True)
    return curve


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(res["curve"]) + 1), res["curve"], label="answer loss (per token)")
    ax.axhline(res["floor"], color="grey", linestyle="--", label=f"no-read floor ln({res['args']['keys']})/tokens")
    ax.set(xlabel="fine-tune step", ylabel="nats", yscale="log",
           title=f"{res['args']['keys']} keys, {res['n_chunks']} chunks in memory, depth {res['args']['depth']}")
    ax.legend()
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--adapter", default="comet_core/adapters/smollm2.safetensors")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--depth", type=float, default=0.8)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench/results/memory_probe.json")
    a = ap.parse_args(argv)
    from comet_core.engine import load

    if a.steps:
        pyplot()  # the fine-tune curve is plotted: fail now, not after the run, without matplotlib
    torch.manual_seed(0)
    t0 = time.time()
    engine = load(a.model, "bf16", a.adapter, trainable=a.steps > 0)
    model = engine.model
    encs = samples(engine.tok, model.cfg, a.keys, a.length, a.depth, a.seed)
    wr = write_read(model, encs[0], encs[1])
    for r in wr["layers"][::5]:
        print(f"write, layer {r['layer']:2d}: temp entry {r['temp_entry']} differs by {r['temp_rel']:.0%} of an "
              f"entry's norm; global state by {r['global_rel']:.0%}")
    print(f"read: the question's hidden states differ by {wr['read_rel']:.1%}")
    floor = math.log(a.keys) / encs[0].n_target
    curve = learn(model, encs, a.steps, a.lr, a.lora_lr) if a.steps else []
    if curve:
        last = sum(curve[-10:]) / len(curve[-10:])
        print(f"learn: answer loss {curve[0]:.3f} -> {last:.3f} (mean of the last 10 steps); "
              f"no-read floor ln({a.keys})/{encs[0].n_target} = {floor:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    res = {"args": vars(a), "n_chunks": len(encs[0].chunks), **wr, "floor": floor, "curve": curve,
           "seconds": round(time.time() - t0)}
    Path(a.out).write_text(json.dumps(res, indent=1))
    if curve:
        plot(res, Path(a.out).with_suffix(".png"))
    return res


if __name__ == "__main__":
    main()
