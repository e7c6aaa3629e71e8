"""Layer-level pipeline parallel training across processes (as in the CoMeT reference), with data parallelism.

A sample is a row of *units*: its context chunks, then the live chunk (pending text + question + answer)
that carries the loss. Pipeline rank p owns a contiguous block of units, holds all layers, and passes
only the compact per-layer memory to the next rank. Cell (i, l) needs only (i, l-1) and (i-1, l), so
rank p runs layer l as soon as rank p-1 has sent the layer-l memory after its block: the grid is swept
as a wavefront (rank p runs layer l at step p + l), L + P - 1 steps instead of L * P, and gradients
flow back the same way. Ideal utilisation is L / (L + P - 1).

* Messages: ONE packed tensor per layer and direction, [1, G + T, d] = [global state ; temp queue],
  tag = layer. Every rank plans the whole sample, so a receiver knows G and T from the layout of its
  first unit. Global memory is recomputed from the state, so it never travels.
* Backward: `_Send` returns a 0-dim token, and a rank runs backward on its loss (the last rank) and
  on its send tokens. This is the multi-root form of the reference's "grad connector": every send node is
  a root, so its backward (which receives the memory gradient from the next rank) always runs, without
  adding 0 x sum(memory) into the activations. The autograd engine runs ready nodes newest first, so a
  rank receives and sends the layer gradients in the order L-1 .. 0 on both sides of every link.
* Gradient checkpointing wraps only the (chunk, layer) cells, never a p2p op.
* Load balance: later chunks carry more temp slots, so blocks are chosen by cost (linear + attention
  FLOPs of each unit's layout), minimising the largest block; a sample with fewer units than ranks
  leaves the middle ranks idle.
* Mesh: world = pp x dp, rank = d * pp + p. Every pipeline rank computes partial gradients of the shared
  adapter, so one all-reduce (SUM) over the world divided by dp gives the single-process gradient of the
  loss averaged over the replicas' samples.
* Failure: the process group has a timeout, so a rank that dies or stalls makes the others raise
  `PipelineError` (gloo: a closed connection at once, a silent peer after the timeout).

Launch: `torchrun --nproc-per-node P comet train --pipeline P ...` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import CometConfig
from ..errors import CometError, one_line
from ..layout import ChunkLayout, build_layout, plan_layouts
from ..model import CometModel
from .samples import Encoded


class PipelineError(CometError):
    """A pipeline or data-parallel peer failed or timed out; one line for the user."""


# ---- mesh ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mesh:
    """Where this process sits: global rank, world = pp * dp, rank = d * pp + p."""

    rank: int = 0
    world: int = 1
    pp: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def p(self) -> int:  # pipeline rank
        return self.rank % self.pp

    @property
    def d(self) -> int:  # data-parallel replica
        return self.rank // self.pp

    @property
    def dp(self) -> int:
        return self.world // self.pp

    def peer(self, p: int) -> int:
        """Global rank of pipeline rank p in this replica."""
        return self.d * self.pp + p


def check_launch(pp: int) -> int:
    """The process count torchrun launched (WORLD_SIZE) fits `--pipeline pp`; returns it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if pp < 1 or world % pp:
        raise PipelineError(f"--pipeline {pp} needs a multiple of {pp} processes, not {world}: launch with "
                            f"torchrun --nproc-per-node {pp} (or a multiple, for data parallelism)")
    return world


def init_mesh(pp: int, timeout_s: float = 600.0) -> Mesh:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world, rank = check_launch(pp), int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world > 1 and not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        except RuntimeError as e:
            raise PipelineError(f"rank {rank}: cannot join the {world} processes: {one_line(e)}") from e
    return Mesh(rank, world, pp, device)


# ---- point to point with autograd -------------------------------------------------------------------
class _Link:
    """The p2p traffic of one step: pending isends (waited at the end) and the time spent blocked."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.pending: list[tuple[dist.Work, torch.Tensor]] = []
        self.waited = 0.0

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int, what: str) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, device=self.mesh.device)
        t = time.perf_counter()
        try:
            dist.recv(buf, src=src, tag=tag)
        except RuntimeError as e:
            raise PipelineError(f"rank {self.mesh.rank}: no layer-{tag} {what} from rank {src}: "
                                f"{one_line(e)}") from e
        self.waited += time.perf_counter() - t
        return buf

    def send(self, x: torch.Tensor, dst: int, tag: int) -> None:
        try:
            self.pending.append((dist.isend(x, dst=dst, tag=tag), x))
        except RuntimeError as e:
            raise PipelineError(f"rank {self.mesh.rank}: cannot send layer {tag} to rank {dst}: "
                                f"{one_line(e)}") from e

    def finish(self) -> None:
        if not self.pending:
            return
        t = time.perf_counter()
        try:
            for work, _ in self.pending:
                work.wait()
        except RuntimeError as e:
            raise PipelineError(f"rank {self.mesh.rank}: a send was never received: {one_line(e)}") from e
        self.pending.clear()
        self.waited += time.perf_counter() - t


class _Send(torch.autograd.Function):
    """forward: send the packed memory to `dst`, return a 0-dim token (a backward root);
    backward: receive the memory's gradient from `dst`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, link: _Link, dst: int, tag: int) -> torch.Tensor:
        link.send(x.contiguous(), dst, tag)
        ctx.link, ctx.dst, ctx.tag, ctx.shape, ctx.dtype = link, dst, tag, tuple(x.shape), x.dtype
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, _token_grad: torch.Tensor):
        g = ctx.link.recv(ctx.shape, ctx.dtype, ctx.dst, ctx.tag, "memory gradient")
        return g, None, None, None


class _Recv(torch.autograd.Function):
    """forward: receive the packed memory from `src`; backward: send its gradient back to `src`.
    `anchor` is an empty leaf that requires grad, so the result is part of the graph."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, link: _Link, shape: tuple[int, ...], dtype: torch.dtype, src: int,
                tag: int) -> torch.Tensor:
        ctx.link, ctx.src, ctx.tag = link, src, tag
        return link.recv(shape, dtype, src, tag, "memory")

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ctx.link.send(g.contiguous(), ctx.src, ctx.tag)
        return None, None, None, None, None, None


# ---- planning: units, costs, partition -----------------------------------------------------------------
def plan_units(cfg: CometConfig, sizes: Sequence[int], n_live: int) -> list[ChunkLayout]:
    """Layouts of a sample's context chunks (text sizes `sizes`) followed by its live chunk."""
    lays = plan_layouts(list(sizes), 0, 0, cfg.stride, cfg.n_global, cfg.budget)
    n_temp = min(cfg.budget, sum(x.n_tbeacons for x in lays)) if lays else 0
    live = build_layout(n_live, cfg.n_global if lays else 0, n_temp, cfg.stride, 0, live=True)
    return lays + [live]


def cost_model(lm_config) -> Callable[[int], float]:
    """Relative cost of one layer over S positions: S x (weights per layer) + S^2 x (attention width)
    (multiply-adds of the projections and MLP, and of the causal half of QK^T and AV)."""
    d, ff = lm_config.hidden_size, lm_config.intermediate_size
    heads, kv = lm_config.num_attention_heads, lm_config.num_key_value_heads
    hd = getattr(lm_config, "head_dim", None) or d // heads
    per_pos = d * hd * (2 * heads + 2 * kv) + 3 * d * ff
    return lambda s: float(s * per_pos + s * s * heads * hd)


def partition(costs: Sequence[float], pp: int) -> list[tuple[int, int]]:
    """Contiguous blocks [a, b) of units for pp ranks minimising the largest block cost (linear
    partition). The last unit (the live chunk) ends the last block; with fewer units than ranks each
    unit gets its own rank and the ranks before the last one left over are idle (empty blocks)."""
    n = len(costs)
    if n <= pp:
        return [(i, i + 1) for i in range(n - 1)] + [(n - 1, n - 1)] * (pp - n) + [(n - 1, n)]
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)
    best = [[math.inf] * (n + 1) for _ in range(pp + 1)]  # best[k][j]: first j units in k blocks
    cut = [[0] * (n + 1) for _ in range(pp + 1)]
    best[0][0] = 0.0
    for k in range(1, pp + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                v = max(best[k - 1][i], pre[j] - pre[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    bounds, j = [], n
    for k in range(pp, 0, -1):
        bounds.append((cut[k][j], j))
        j = cut[k][j]
    return bounds[::-1]


def wavefront_makespan(block_costs: Sequence[float], n_layers: int) -> float:
    """Time to sweep the grid when rank r needs c_r per layer: F(r, l) = max(F(r-1, l), F(r, l-1)) + c_r.
    Idle ranks (c = 0) are not in the chain."""
    active = [c for c in block_costs if c > 0]
    finish = [0.0] * len(active)
    for _ in range(n_layers):
        prev = 0.0
        for r, c in enumerate(active):
            finish[r] = max(finish[r], prev) + c
            prev = finish[r]
    return max(finish, default=0.0)


@dataclass(frozen=True)
class Plan:
    units: list[ChunkLayout]
    blocks: list[tuple[int, int]]
    block_costs: list[float]
    n_layers: int

    @property
    def pp(self) -> int:
        return len(self.blocks)

    @property
    def balance(self) -> float:
        """Mean block cost / largest block cost (1 = perfectly balanced)."""
        return sum(self.block_costs) / (self.pp * max(self.block_costs))

    @property
    def bound(self) -> float:
        """The wavefront's utilisation with perfectly balanced blocks: L / (L + P - 1)."""
        return self.n_layers / (self.n_layers + self.pp - 1)

    @property
    def predicted(self) -> float:
        """Utilisation of these blocks in the wavefront (imbalance and fill/drain, no communication)."""
        total = self.n_layers * sum(self.block_costs)
        return total / (self.pp * wavefront_makespan(self.block_costs, self.n_layers))

    def summary(self) -> dict:
        return {"blocks": self.blocks, "positions": [sum(u.length for u in self.units[a:b]) for a, b in self.blocks],
                "balance": round(self.balance, 4), "bound": round(self.bound, 4),
                "predicted": round(self.predicted, 4)}


def plan_sample(model: CometModel, enc: Encoded, pp: int) -> Plan:
    units = plan_units(model.cfg, [len(c) for c in enc.chunks], len(enc.live))
    cost = cost_model(model.lm.config)
    costs = [cost(u.length + int(model.cfg.sink)) for u in units]
    blocks = partition(costs, pp)
    return Plan(units, blocks, [sum(costs[a:b]) for a, b in blocks], model.n_layers)


# ---- one sample through the pipeline ------------------------------------------------------------------
@dataclass
class StepOut:
    loss: float | None  # summed answer cross-entropy (the rank holding the live chunk only)
    exact: bool | None  # every answer token is the argmax (same rank)
    wall: float  # seconds for forward + backward on this rank
    waited: float  # seconds of it blocked in receives and send completion
    plan: Plan


def pipeline_step(model: CometModel, enc: Encoded, mesh: Mesh, scale: float = 1.0, grad_ckpt: bool = True,
                  end_weight: float = 1.0) -> StepOut:
    """Forward and backward of one sample on this pipeline rank: gradients of `scale` x the summed
    answer cross-entropy accumulate into this rank's share of the adapter's .grad (sum them over the
    pipeline ranks, see `sync_grads`). With pp = 1 this is `sample_loss` + backward, without any p2p."""
    t0 = time.perf_counter()
    plan = plan_sample(model, enc, mesh.pp)
    units, n_ctx = plan.units, len(enc.chunks)
    a, b = plan.blocks[mesh.p]
    if a == b:
        return StepOut(None, None, 0.0, 0.0, plan)
    active = [p for p, (x, y) in enumerate(plan.blocks) if y > x]
    k = active.index(mesh.p)
    prev = mesh.peer(active[k - 1]) if k > 0 else None
    nxt = mesh.peer(active[k + 1]) if k + 1 < len(active) else None
    dev, link = model.device, _Link(mesh)
    mine = list(range(a, min(b, n_ctx)))
    bodies = [model.embed_body(torch.tensor([enc.chunks[i]], device=dev), units[i]) for i in mine]
    live = model.embed_body(torch.tensor([enc.live], device=dev), units[n_ctx]) if b > n_ctx else None
    first = units[a]
    shape = (1, first.n_mem, model.d)
    sinks = model.sink_states(1)  # the sink's per-layer states, computed on every working rank
    anchor = torch.empty(0, device=dev, requires_grad=True)
    roots: list[torch.Tensor] = []
    for l in range(model.n_layers):
        gs = tq = None
        if prev is not None:
            x = _Recv.apply(anchor, link, shape, model.dtype, prev, l)
            gs, tq = x[:, :first.n_gmem], (x[:, first.n_gmem:] if first.n_tmem else None)
        for j, i in enumerate(mine):
            if grad_ckpt:
                bodies[j], gs, tq = checkpoint(model.cell, l, units[i], bodies[j], gs, tq, sinks[l],
                                               use_reentrant=False)
            else:
                bodies[j], gs, tq = model.cell(l, units[i], bodies[j], gs, tq, sinks[l])
        if live is not None:
            mem = model.memory_at(l, gs, tq)
            live = (checkpoint(model.run_layer, l, live, mem, sinks[l], use_reentrant=False) if grad_ckpt
                    else model.run_layer(l, live, mem, sinks[l]))
        if nxt is not None:
            packed = torch.cat([t for t in (gs, tq) if t is not None], dim=1)
            assert packed.shape[1] == units[b].n_mem, "packed memory does not match the receiver's layout"
            roots.append(_Send.apply(packed, link, nxt, l))
    loss = exact = None
    if live is not None:
        hid = live[:, units[n_ctx].text_idx.to(dev)]
        pos = enc.targets()
        logits = model.logits(hid[0, [i - 1 for i in pos]])
        targets = torch.tensor([enc.live[i] for i in pos], device=dev)
        ce = F.cross_entropy(logits, targets, reduction="none")
        if end_weight != 1.0:  # as batch_loss weighs it
            ce = ce * torch.tensor(enc.weights(end_weight), device=dev, dtype=ce.dtype)
        ce = ce.sum()
        roots.append(ce * scale)
        loss, exact = ce.item(), bool((logits.argmax(-1) == targets).all())
    torch.autograd.backward(roots)
    link.finish()
    return StepOut(loss, exact, time.perf_counter() - t0, link.waited, plan)


def all_reduce(t: torch.Tensor, what: str) -> None:
    try:
        dist.all_reduce(t)
    except RuntimeError as e:
        raise PipelineError(f"rank {dist.get_rank()}: all-reduce of {what} failed: {one_line(e)}") from e


def sync_grads(params: Sequence[torch.nn.Parameter], mesh: Mesh) -> None:
    """Sum the partial gradients over the pipeline ranks and average them over the replicas (one
    all-reduce of one flat buffer); afterwards every rank holds the same full gradient."""
    if mesh.world == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    all_reduce(flat, "gradients")
    flat /= mesh.dp
    off = 0
    for p in params:
        p.grad = flat[off:off + p.numel()].view_as(p).to(p.dtype, copy=True)
        off += p.numel()


# ---- the training loop -------------------------------------------------------------------------------
def train_pipeline(args, on_step: Callable[[dict], None] | None = None, pp: int = 1, timeout_s: float = 600.0
                   ) -> dict:
    """`trainer.train` over pp x dp processes (torchrun's environment): the same loop."""
    from .trainer import train

    return train(args, on_step, pp=pp, timeout_s=timeout_s)


# ---- local launcher (tests, benchmark) ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable, rank: int, world: int, port: int, threads: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    code = 0
    try:
        fn(*args)
        if dist.is_initialized():
            dist.destroy_process_group()
    except BaseException as e:  # report, then exit non-zero without waiting on dead peers
        code = 1
        print(f"rank {rank}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        if not isinstance(e, PipelineError):
            traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spawn_local(fn: Callable, world: int, args: tuple = (), timeout_s: float = 300.0, threads: int = 1
                ) -> list[int | None]:
    """Run fn(*args) in `world` fresh processes on this machine (RANK etc. set as torchrun would; fn
    calls `init_mesh`). Returns the exit codes; a process still running after timeout_s is killed and
    reported as None."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, threads, args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
    codes: list[int | None] = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes
