"""Layer-level pipeline parallelism: P spawned gloo processes give the single-process loss and gradients."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_data import _make_data
from tiny import save_tiny, tiny_lm

from comet_core.config import CometConfig
from comet_core.memory import MemoryState
from comet_core.model import CometModel
from comet_core.train import pipeline as pl
from comet_core.train.trainer import Encoded, TrainArgs, sample_loss, train

CFG = CometConfig(chunk_size=16, stride=4, n_global=4, budget=8, lora_rank=2)
LAYERS = 3


def make_model() -> CometModel:
    """The same tiny fp32 model in every process, adapter perturbed so that every part has a gradient."""
    torch.manual_seed(0)
    m = CometModel.create(tiny_lm(layers=LAYERS), CFG, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.mem.trainable().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
            p.requires_grad_(True)
    return m


def make_sample(seed: int, sizes=(16, 16, 10, 16, 16, 12), n_live: int = 9, n_target: int = 3) -> Encoded:
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(3, 384) for _ in range(n)]  # noqa: E731
    return Encoded([ids(n) for n in sizes], ids(n_live), n_target)


def reference(encs: list[Encoded]) -> tuple[float, dict[str, torch.Tensor]]:
    """Single process: mean over samples of the per-token loss, and its gradients."""
    m = make_model()
    total = 0.0
    for enc in encs:
        loss, _ = sample_loss(m, enc, grad_ckpt=False)
        (loss / (enc.n_target * len(encs))).backward()
        total += loss.item() / (enc.n_target * len(encs))
    return total, {k: p.grad.clone() for k, p in m.mem.trainable().items() if p.grad is not None}


def _worker(out: str, meshes: list[tuple[int, int]], die: int | None) -> None:
    """Run one sample per replica through each (pp, dp) mesh of the same processes; rank 0 saves the
    synced gradients and the loss of each."""
    m = make_model()  # before joining, so that a slow start does not count against the timeout
    base = pl.init_mesh(meshes[0][0], timeout_s=15 if die is not None else 120)
    if die == base.rank:
        Path(out, "died").write_text(str(time.time()))
        os._exit(3)  # a worker crashes before sending anything
    params = m.mem.trainable()
    for pp, dp in meshes:
        mesh = replace(base, pp=pp)
        assert mesh.dp == dp
        enc = make_sample(mesh.d)
        for p in params.values():
            p.grad = None
        try:
            r = pl.pipeline_step(m, enc, mesh, scale=1.0 / enc.n_target, grad_ckpt=True)
        except pl.PipelineError:
            Path(out, f"failed{mesh.rank}").write_text(str(time.time()))
            raise
        pl.sync_grads(list(params.values()), mesh)
        loss = torch.tensor([0.0 if r.loss is None else r.loss / (enc.n_target * dp)], dtype=torch.float64)
        torch.distributed.all_reduce(loss)
        if mesh.rank == 0:
            grads = {k: p.grad for k, p in params.items()}
            save_file({**grads, "__loss__": loss.float()}, str(Path(out) / f"grads_{pp}x{dp}.safetensors"))


def run_pipeline(tmp_path: Path, meshes: list[tuple[int, int]], die: int | None = None) -> list[int | None]:
    world = meshes[0][0] * meshes[0][1]
    return pl.spawn_local(_worker, world, (str(tmp_path), meshes, die), timeout_s=600)


def check_equal(tmp_path: Path, pp: int, dp: int) -> None:
    want_loss, want = reference([make_sample(d) for d in range(dp)])
    got = load_file(str(tmp_path / f"grads_{pp}x{dp}.safetensors"))
    assert got.pop("__loss__").item() == pytest.approx(want_loss, rel=1e-5)
    assert set(want) <= set(got)
    for k, g in got.items():
        torch.testing.assert_close(g, want.get(k, torch.zeros_like(g)), atol=1e-5, rtol=1e-4, msg=k)


# ---- without processes ---------------------------------------------------------------------------------
def test_single_rank_step_is_sample_loss_and_backward():
    enc = make_sample(0)
    want_loss, want = reference([enc])
    m = make_model()
    r = pl.pipeline_step(m, enc, pl.Mesh(), scale=1.0 / enc.n_target)
    assert r.loss / enc.n_target == pytest.approx(want_loss, rel=1e-6) and r.waited == 0.0
    for k, p in m.mem.trainable().items():
        torch.testing.assert_close(p.grad, want[k], atol=1e-6, rtol=1e-5, msg=k)
    from comet_core.train.trainer import batch_loss

    with torch.no_grad():
        want_w, _ = batch_loss(make_model(), [enc], grad_ckpt=False, end_weight=3.0)
    r3 = pl.pipeline_step(make_model(), enc, pl.Mesh(), end_weight=3.0)  # the same weighting on the pipeline
    assert r3.loss == pytest.approx(want_w.item(), rel=1e-5) and r3.loss > r.loss


def test_plan_matches_the_engine_layouts():
    m = make_model()
    enc = make_sample(0)
    units = pl.plan_units(CFG, [len(c) for c in enc.chunks], len(enc.live))
    st, _ = m.read(MemoryState.empty(m.n_layers), [torch.tensor([c]) for c in enc.chunks])
    assert units[:-1] == m.layouts(MemoryState.empty(m.n_layers), [len(c) for c in enc.chunks])
    assert units[-1] == m.live_layout(st, len(enc.live))


def test_partition_by_cost():
    # later units cost more: blocks by cost are shorter at the end, and minimise the largest block
    costs = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 1.0]
    blocks = pl.partition(costs, 2)
    assert blocks == [(0, 4), (4, 7)]
    assert pl.partition(costs, 7) == [(i, i + 1) for i in range(7)]
    # fewer units than ranks: the ranks left over before the last one are idle
    assert pl.partition([1.0, 1.0], 4) == [(0, 1), (1, 1), (1, 1), (1, 2)]
    assert pl.wavefront_makespan([1.0] * 4, 28) == 31  # L + P - 1 steps
    plan = pl.plan_sample(make_model(), make_sample(0), 4)
    assert plan.bound == LAYERS / (LAYERS + 3) and 0 < plan.predicted <= plan.bound and plan.balance <= 1


# ---- spawned gloo processes -----------------------------------------------------------------------------
# Each sample has 6 context chunks + the live chunk = 7 units: not divisible by 2 or 4.
def test_two_rank_pipeline_matches_single_process(tmp_path):
    assert run_pipeline(tmp_path, [(2, 1)]) == [0, 0]
    check_equal(tmp_path, 2, 1)


def test_four_rank_pipeline_and_pipeline_x_data_parallel_match_single_process(tmp_path):
    # the same four processes: one 4-rank pipeline, then 2 replicas of a 2-rank pipeline (2 samples)
    assert run_pipeline(tmp_path, [(4, 1), (2, 2)]) == [0] * 4
    check_equal(tmp_path, 4, 1)
    check_equal(tmp_path, 2, 2)


def test_dead_worker_makes_the_others_fail(tmp_path):
    codes = run_pipeline(tmp_path, [(3, 1)], die=1)
    assert codes[1] == 3 and codes[0] == codes[2] == 1, codes
    died = float((tmp_path / "died").read_text())
    for r in (0, 2):  # both neighbours notice, well within the 15 s timeout (plus a loaded machine's slack)
        assert float((tmp_path / f"failed{r}").read_text()) - died < 45


def _train_args(out: Path, model: Path, steps: int, resume: bool = False) -> TrainArgs:
    return TrainArgs(out=str(out), model=str(model), precision="fp32", chunk_size=256, n_global=4, budget=16,
                     lora_rank=2, steps=steps, accum=2, save_every=1, warmup=1, resume=resume)


def _train_worker(out: str, model: str) -> None:
    pl.init_mesh(2, timeout_s=120)
    pl.train_pipeline(_train_args(Path(out), Path(model), steps=2), pp=2)
    pl.train_pipeline(_train_args(Path(out), Path(model), steps=3, resume=True), pp=2)


def test_train_with_pipeline_logs_checkpoints_resumes_like_the_trainer(tmp_path, monkeypatch):
    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    model = save_tiny(tmp_path / "model")
    train(_train_args(tmp_path / "single", model, steps=3))  # one process, no interruption
    assert pl.spawn_local(_train_worker, 2, (str(tmp_path / "pp"), str(model)), timeout_s=600) == [0, 0]
    logs = {k: [json.loads(x) for x in (tmp_path / k / "log.jsonl").read_text().splitlines()]
            for k in ("single", "pp")}
    assert [r["step"] for r in logs["pp"]] == [1, 2, 3]  # rank 0 alone logs; the resumed run continues
    for a, b in zip(logs["single"], logs["pp"], strict=True):
        assert b["pipeline"] == 2 and b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        assert (b["level"], b["seen_tokens"]) == (a["level"], a["seen_tokens"])


def test_cli_pipeline_without_torchrun_says_how_to_launch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    r = subprocess.run([sys.executable, "-m", "comet_cli.train_cmd", "--pipeline", "2", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "torchrun --nproc-per-node 2" in r.stderr, r.stderr
