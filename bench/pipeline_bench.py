"""Layer-level pipeline parallelism: one training step (forward + backward) on one long sample, with
P = 1, 2, 4 processes on this machine (gloo, one thread each; nccl and one GPU each on a GPU machine).

For each P it reports the step time (slowest rank; the fastest of the repeats and rounds, since other
processes on the machine can only slow a step down), the speed-up over P = 1, the
measured utilisation (sum over ranks of the time not spent blocked in a receive, / (P x step time)),
the wavefront bound L / (L + P - 1), the utilisation predicted for the chosen blocks (imbalance and
fill/drain, no communication), and the balance of the cost partition next to a partition by chunk count.
With more processes than free cores the processes share cores, and busy time then includes time spent
waiting for a core: "cores obtained" (CPU seconds of all ranks / step time) shows how many cores the
step really got, and "CPU s" that the pipeline adds no work (no recompute, only the small messages).

    python -m bench.pipeline_bench                       # random 8-layer d=256 llama, 16 chunks of 128
    python -m bench.pipeline_bench --model HuggingFaceTB/SmolLM2-135M-Instruct --precision bf16 \\
        --chunk-size 512 --chunks 32                      # a real backbone (random token ids)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from comet_core.config import CometConfig
from comet_core.train import pipeline as pl
from comet_core.train.trainer import Encoded

RESULTS = Path(__file__).resolve().parent / "results"


def lm_config(a: argparse.Namespace):
    """The backbone's config: the random llama's, or the real model's (weights not loaded)."""
    from transformers import AutoConfig, LlamaConfig

    if a.model:
        from comet_core.loading import resolve_model

        _, path = resolve_model(a.model)
        return AutoConfig.from_pretrained(path)
    return LlamaConfig(vocab_size=4096, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                       num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=4096,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def comet_config(a: argparse.Namespace) -> CometConfig:
    return CometConfig(chunk_size=a.chunk_size, stride=a.stride, n_global=a.n_global, budget=a.budget,
                       lora_rank=a.lora_rank)


def sample(a: argparse.Namespace, vocab: int) -> Encoded:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return Encoded([ids(a.chunk_size) for _ in range(a.chunks)], ids(a.live), a.target)


def build(a: argparse.Namespace, device: torch.device):
    from comet_core.model import CometModel

    if a.model:
        from comet_core.loading import load_model

        lm = load_model(a.model, precision=a.precision, device=str(device), trainable=True).model
    else:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(lm_config(a), attn_implementation="sdpa").to(device).eval()
        lm.requires_grad_(False)
    model = CometModel.create(lm, comet_config(a), seed=0)
    for p in model.mem.trainable().values():
        p.requires_grad_(True)
    return model


def _worker(a: argparse.Namespace, pp: int, out: str) -> None:
    model = build(a, _device())  # before joining: a slow start does not count against the timeout
    mesh = pl.init_mesh(pp, timeout_s=a.timeout)
    enc = sample(a, model.lm.config.vocab_size)
    cuda = mesh.device.type == "cuda"
    rows = []
    for i in range(a.warmup + a.repeat):
        for p in model.mem.trainable().values():
            p.grad = None
        if mesh.world > 1:
            dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        r = pl.pipeline_step(model, enc, mesh, scale=1.0 / enc.n_target, grad_ckpt=not a.no_ckpt)
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if i >= a.warmup:
            rows.append({"wall": wall, "cpu": cpu, "waited": None if cuda else r.waited})
    Path(out, f"rank{mesh.rank}.json").write_text(json.dumps({"rows": rows, "plan": r.plan.summary()}))


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def run(a: argparse.Namespace, pp: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        codes = pl.spawn_local(_worker, pp, (a, pp, tmp), timeout_s=a.timeout, threads=a.threads)
        if codes != [0] * pp:
            raise SystemExit(f"P={pp}: workers exited with {codes}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(pp)]
        total_s = time.time() - t
    steps = [max(rk["rows"][i]["wall"] for rk in ranks) for i in range(a.repeat)]
    utils = [None if ranks[0]["rows"][i]["waited"] is None else
             sum(rk["rows"][i]["wall"] - rk["rows"][i]["waited"] for rk in ranks) / (pp * steps[i])
             for i in range(a.repeat)]
    best = min(range(a.repeat), key=steps.__getitem__)  # other processes on the machine only slow steps down
    cpu = sum(rk["rows"][best]["cpu"] for rk in ranks)
    return {"P": pp, "step_s": steps[best], "steps_s": steps, "measured_util": utils[best], "utils": utils,
            "cpu_s": cpu, "cores_used": cpu / steps[best], "plan": ranks[0]["plan"], "process_s": total_s}


def count_balance(a: argparse.Namespace, pp: int) -> float:
    """Balance of blocks of equal chunk count (the reference's C/P split; the live chunk on the last rank)."""
    cfg = comet_config(a)
    units = pl.plan_units(cfg, [a.chunk_size] * a.chunks, a.live)
    cost = pl.cost_model(lm_config(a))
    costs = [cost(u.length + int(cfg.sink)) for u in units]
    k = len(units) / pp
    blocks = [sum(costs[round(r * k):round((r + 1) * k)]) for r in range(pp)]
    return sum(blocks) / (pp * max(blocks))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2,4", help="pipeline sizes to time")
    p.add_argument("--model", default=None, help="a real backbone (default: a random llama of the sizes below)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "8bit", "4bit"])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--chunks", type=int, default=16, help="context chunks in the sample")
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--n-global", type=int, default=16)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--live", type=int, default=64, help="tokens of the live chunk")
    p.add_argument("--target", type=int, default=16, help="answer tokens (the loss)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed steps per process; the fastest counts")
    p.add_argument("--rounds", type=int, default=1, help="sweeps over --procs; the fastest run of each P counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--no-ckpt", action="store_true", help="no gradient checkpointing")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", type=Path, default=RESULTS / "pipeline.json")
    a = p.parse_args(argv)
    procs = [int(x) for x in a.procs.split(",")]
    load = os.getloadavg()[0]
    rows = []
    for _ in range(a.rounds):  # interleaved, so that a burst of load elsewhere does not hit one P only
        for pp in procs:
            r = run(a, pp)
            old = next((x for x in rows if x["P"] == pp), None)
            if old is None or r["step_s"] < old["step_s"]:
                rows = [x for x in rows if x["P"] != pp] + [r]
    rows.sort(key=lambda x: procs.index(x["P"]))
    base = next((r["step_s"] for r in rows if r["P"] == 1), None)
    for r in rows:
        r["speedup"] = base / r["step_s"] if base else None
        r["count_balance"] = count_balance(a, r["P"])
    cfg = lm_config(a)
    print(f"\n{a.model or 'random llama'}: L={cfg.num_hidden_layers} d={cfg.hidden_size}, {a.chunks} chunks of "
          f"{a.chunk_size} + live {a.live}; {os.cpu_count()} cores, {a.threads} thread(s)/process, "
          f"load average {load:.1f} before the run")
    print("| P | step s | speed-up | measured util | bound L/(L+P-1) | predicted | balance (cost) | "
          "balance (count) | CPU s (all ranks) | cores obtained | positions per rank |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pln = r["plan"]
        util = "–" if r["measured_util"] is None else f"{r['measured_util']:.2f}"
        print(f"| {r['P']} | {r['step_s']:.2f} | {r['speedup']:.2f} | {util} | {pln['bound']:.2f} | "
              f"{pln['predicted']:.2f} | {pln['balance']:.2f} | {r['count_balance']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['cores_used']:.2f} | {', '.join(map(str, pln['positions']))} |")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    a.json.write_text(json.dumps({"args": args, "cores": os.cpu_count(), "load_before": load,
                                  "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
