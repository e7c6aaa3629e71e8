"""Evaluation: passkey retrieval, needle QA and language modelling, CoMeT against two baselines.

Systems. Each is loaded fresh, one after another, so the trained LoRA (which wraps the backbone's q/v
projections in place) never touches a baseline's backbone:
  comet      the base model with the trained adapter (memory nets, beacon embeddings, LoRA);
  untrained  the same model with a fresh adapter of the same settings (``CometModel.create(seed=0)``:
             random memory nets, LoRA with B = 0), i.e. the base model plus untrained memory;
  full       the base model alone, full attention over the input left-truncated to its window
             (``max_position_embeddings``: 8,192 for SmolLM2). Longer inputs lose their beginning.

Every system answers the same samples: one seeded rng per (task, length, depth) cell, drawn with
``make_sample(..., split="eval")`` (source text the training never saw). The framing is the same for all:
the raw context, then ``question_ids`` (the question in the chat template, assistant turn opened), greedy
decoding. CoMeT reads exactly as the CLI does (``Reader.feed`` + ``finish``) and answers in the same
layout (``answer.prepare``: the pending tail beyond the priming length is read into memory first).

Scores. passkey: the key appears in the answer (``tasks.score``). needle_qa: SQuAD exact match and token F1
against every gold answer. lm: perplexity of the tokens of chunk k+1 of a held-out play or essay given the
k chunks before it (k = length // chunk_size), with memory (CoMeT reads k chunks, then scores chunk k+1 as
the live chunk, teacher-forced), without memory (chunk k+1 alone on an empty state, same adapter:
``comet-nomem``) and with full attention (everything before, truncated to the window). The first token of
chunk k+1 is not scored (nothing precedes it inside the live chunk), so every variant scores the same
chunk_size - 1 tokens.

Lengths are in tokens of the model's tokenizer; ``k`` means 1,024 (``4k`` = 4,096) and ``M`` 1,048,576.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from .answer import prepare
from .config import CometConfig
from .generate import generate
from .memory import MemoryState
from .model import CometModel
from .prompt import question_ids, stop_ids
from .reader import Reader
from .tasks import Sample, make_lm, make_sample, score

K = 1024
SYSTEMS = ("comet", "untrained", "full")
TASKS = ("passkey", "needle_qa", "lm")
PREFILL = 8192  # tokens per forward when the full-attention baseline prefills (SmolLM2: one forward)
# Rough speeds on 2 CPU cores (SmolLM2-135M, text tokens/s), only for the estimate printed before a run.
READ_TOK_S = {"4bit": 700.0, "8bit": 450.0, "bf16": 800.0, "fp32": 300.0}  # CoMeT reading
PREFILL_TOK_S = {"4bit": 800.0, "8bit": 450.0, "bf16": 900.0, "fp32": 350.0}  # full attention, <= 8k tokens
DECODE_TOK_S = {"4bit": 50.0, "8bit": 35.0, "bf16": 40.0, "fp32": 20.0}
FAR_ABOVE = 0.20  # needle-QA beyond the window: CoMeT's F1 must beat full attention by this much
WITHIN = 0.05  # needle-QA inside the window: CoMeT's F1 may trail full attention by at most this much
PASSKEY_MIN = 0.95  # passkey: accuracy at every depth


# --- arguments -----------------------------------------------------------------------------------------

def parse_lengths(text: str) -> list[int]:
    """"4k,16k,64k,1M" -> [4096, 16384, 65536, 1048576] (k = 1,024); plain numbers are tokens."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = {"k": K, "m": K * K}.get(p[-1], 1)
        try:
            n = round(float(p[:-1] if mult > 1 else p) * mult)
        except ValueError:
            raise ValueError(f"bad length {part.strip()!r}: give tokens like 4096, 4k or 1M") from None
        if n < 1:
            raise ValueError(f"bad length {part.strip()!r}: must be at least 1 token")
        out.append(n)
    if not out:
        raise ValueError("no lengths given")
    return list(dict.fromkeys(out))


def parse_depths(text: str) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]; each in [0, 1] (fraction of the filler before the needle)."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            d = float(part)
        except ValueError:
            raise ValueError(f"bad depth {part.strip()!r}: give fractions like 0,0.5,1") from None
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"bad depth {part.strip()!r}: must be between 0 and 1")
        out.append(d)
    if not out:
        raise ValueError("no depths given")
    return list(dict.fromkeys(out))


def parse_choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in allowed]
    if bad or not out:
        raise ValueError(f"bad {what} {', '.join(bad) or repr(text)}: choose from {', '.join(allowed)}")
    return list(dict.fromkeys(out))


def fmt_length(n: int) -> str:
    if n % (K * K) == 0:
        return f"{n // (K * K)}M"
    return f"{n // K}k" if n % K == 0 else str(n)


# --- systems -------------------------------------------------------------------------------------------

@dataclass
class System:
    name: str  # one of SYSTEMS
    lm: nn.Module  # the backbone (wrapped by `model`'s LoRA for CoMeT systems)
    tok: Any
    precision: str
    model: CometModel | None = None  # None: full attention

    @property
    def window(self) -> int:
        return int(self.lm.config.max_position_embeddings)


def adapter_config(adapter: str | Path) -> CometConfig:
    from .adapter import read_adapter

    return CometConfig.from_dict(read_adapter(adapter)[0]["config"])


def load_system(name: str, model_spec: str | None, precision: str, adapter: str | Path) -> System:
    """A fresh backbone load, plus the trained adapter (comet), a fresh one of the same settings
    (untrained) or nothing (full)."""
    from .adapter import load_adapter
    from .loading import load_model, model_fingerprint

    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose from {SYSTEMS}")
    loaded = load_model(model_spec, precision)
    lm = loaded.model
    model = None
    if name == "comet":
        model, _ = load_adapter(adapter, lm, model_fingerprint(lm))
    elif name == "untrained":
        model = CometModel.create(lm, adapter_config(adapter), seed=0)
    return System(name, lm, loaded.tokenizer, precision, model)


# --- answering -----------------------------------------------------------------------------------------

@torch.no_grad()
def answer_with_memory(model: CometModel, tok, context: str, question: str, max_new_tokens: int = 32,
                       priming: int | None = None) -> str:
    """Stream the context through a Reader (as the CLI does), then answer greedily from memory in the
    answer layout (answer.py; priming None: the adapter's own)."""
    reader = Reader(model, tok)
    reader.feed(context)
    reader.finish()
    st, prompt = prepare(model, reader.state, question_ids(tok, question),
                         model.cfg.priming if priming is None else priming)
    ids = list(generate(model, st, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids(tok, model.lm.config),
                        n_vocab=len(tok)))
    return tok.decode(ids, skip_special_tokens=True)


def heldout_accuracy(model: CometModel, tok, task: str, n_tokens: int, samples: int, seed: int = 0,
                     max_new_tokens: int = 16) -> tuple[float, list[dict]]:
    """Generated answers to `samples` eval-split samples of `task` with n_tokens of context, in the answer
    layout the CLI uses; the same samples for the same (task, n_tokens, seed). Returns (accuracy, rows)."""
    rng = random.Random(f"heldout:{task}:{seed}:{n_tokens}")
    rows = []
    for _ in range(samples):
        s = make_sample(task, tok, n_tokens, rng, "eval")
        pred = answer_with_memory(model, tok, s.context, s.question, max_new_tokens)
        sc = score(s, pred)
        rows.append({"answer": s.answer, "prediction": pred, "depth": s.meta.get("depth"),
                     "acc": sc.get("acc", sc.get("em", 0.0))})
    return sum(r["acc"] for r in rows) / max(1, len(rows)), rows


def prefill(lm: nn.Module, ids: list[int], keep: int = 1) -> tuple[torch.Tensor, DynamicCache]:
    """Run `lm` over `ids` with a fresh KV cache, PREFILL tokens per forward (bounded memory); returns the
    fp32 logits of the last `keep` positions [keep, V] and the cache."""
    if not 1 <= keep <= len(ids):
        raise ValueError(f"keep={keep} must be in [1, {len(ids)}]")
    cache = DynamicCache(config=lm.config)
    x = torch.tensor([ids], device=lm.device)
    split = len(ids) - keep
    for a in range(0, split, PREFILL):
        lm(input_ids=x[:, a:min(a + PREFILL, split)], cache=cache, use_cache=True, logits_to_keep=1)
    logits = lm(input_ids=x[:, split:], cache=cache, use_cache=True).logits[0].float()
    return logits, cache


@torch.no_grad()
def answer_full_attention(lm: nn.Module, tok, context: str, question: str, window: int,
                          max_new_tokens: int = 32) -> str:
    """The base model alone: context ids + question ids, left-truncated to `window - max_new_tokens`
    tokens, then greedy decoding with a KV cache."""
    if max_new_tokens >= window:
        raise ValueError(f"max_new_tokens={max_new_tokens} does not fit a window of {window}")
    ids = tok.encode(context, add_special_tokens=False) + question_ids(tok, question)
    ids = ids[-(window - max_new_tokens):]
    logits, cache = prefill(lm, ids)
    stops, n_vocab, out = set(stop_ids(tok, lm.config)), len(tok), []
    for i in range(max_new_tokens):
        logits = logits[-1]
        logits[n_vocab:] = float("-inf")
        t = int(logits.argmax())
        if t in stops:
            break
        out.append(t)
        if i == max_new_tokens - 1:
            break
        x = torch.tensor([[t]], device=lm.device)
        logits = lm(input_ids=x, cache=cache, use_cache=True).logits[0].float()
    return tok.decode(out, skip_special_tokens=True)


def answer(system: System, sample: Sample, max_new_tokens: int = 32) -> str:
    if system.model is None:
        return answer_full_attention(system.lm, system.tok, sample.context, sample.question, system.window,
                                     max_new_tokens)
    return answer_with_memory(system.model, system.tok, sample.context, sample.question, max_new_tokens)


# --- language modelling ----------------------------------------------------------------------------------

@torch.no_grad()
def nll_with_memory(model: CometModel, ids: list[int], k: int, memory: bool = True) -> tuple[float, int]:
    """Summed NLL of chunk k+1's tokens (all but its first) given the k chunks before it in memory (or,
    memory=False, given nothing but chunk k+1 itself on an empty state). Returns (nll, tokens scored)."""
    c = model.cfg.chunk_size
    live = ids[k * c:(k + 1) * c]
    if len(live) < 2:
        raise ValueError(f"need at least {k * c + 2} tokens, got {len(ids)}")
    st = MemoryState.empty(model.n_layers)
    if memory:
        for i in range(k):  # chunk by chunk, as the Reader does on CPU
            st, _ = model.read(st, [torch.tensor([ids[i * c:(i + 1) * c]], device=model.device)])
    hid = model.live(st, torch.tensor([live], device=model.device))
    logits = model.logits(hid[0, :-1])
    nll = F.cross_entropy(logits, torch.tensor(live[1:], device=logits.device), reduction="sum")
    return float(nll), len(live) - 1


@torch.no_grad()
def nll_full_attention(lm: nn.Module, ids: list[int], start: int, end: int, window: int) -> tuple[float, int]:
    """Summed NLL of ids[start:end] given everything before each token, truncated to the last `window`
    tokens before ids[end - 1]. Returns (nll, tokens scored)."""
    n = end - start
    if not 1 <= start < end <= len(ids) or n > window:
        raise ValueError(f"cannot score ids[{start}:{end}] of {len(ids)} with a window of {window}")
    inputs = ids[:end - 1][-window:]
    logits, _ = prefill(lm, inputs, keep=n)
    nll = F.cross_entropy(logits, torch.tensor(ids[start:end], device=logits.device), reduction="sum")
    return float(nll), n


def lm_ids(tok, sample: Sample) -> list[int]:
    """The token stream of an lm sample: the context, then its continuation."""
    sep = sample.meta.get("answer_sep", " ")
    return tok.encode(sample.context, add_special_tokens=False) + tok.encode(sep + sample.answer,
                                                                              add_special_tokens=False)


# --- samples and runs ------------------------------------------------------------------------------------

Cells = dict[tuple[int, float | None], list[Sample]]


def make_cells(task: str, tok, lengths: list[int], depths: list[float] | None, samples: int, seed: int = 0,
               chunk_size: int = 512) -> Cells:
    """`samples` eval-split samples per (length, depth) cell, each cell from its own seeded rng (adding a
    length or a depth does not change the other cells). lm cells have depth None and carry at least
    2 * chunk_size tokens of continuation."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    cells: Cells = {}
    for n in lengths:
        for d in ([None] if task == "lm" or not depths else depths):
            rng = random.Random(f"{task}:{seed}:{n}:{d}")
            if task == "lm":
                cells[(n, d)] = [make_lm(tok, n, rng, "eval", answer_tokens=2 * chunk_size) for _ in range(samples)]
            else:
                cells[(n, d)] = [make_sample(task, tok, n, rng, "eval", d) for _ in range(samples)]
    return cells


def run_answers(system: System, task: str, cells: Cells, max_new_tokens: int = 32,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Answer every sample of every cell; one row per sample with the task's scores."""
    rows = []
    for (n, d), samples in cells.items():
        for i, s in enumerate(samples):
            t0 = time.monotonic()
            pred = answer(system, s, max_new_tokens)
            row = {"task": task, "precision": system.precision, "system": system.name, "length": n, "depth": d,
                   "sample": i, "tokens": s.meta.get("n_tokens"), "answers": list(s.answers or [s.answer]),
                   "prediction": pred, **score(s, pred), "seconds": round(time.monotonic() - t0, 2)}
            if system.model is None:
                need = len(system.tok.encode(s.context, add_special_tokens=False)) + len(
                    question_ids(system.tok, s.question)) + max_new_tokens
                row["truncated"] = need > system.window
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def run_lm(system: System, cells: Cells, chunk_size: int, on_row: Callable[[dict], None] | None = None
           ) -> list[dict]:
    """Perplexity rows of chunk k+1 (k = length // chunk_size): comet gives two rows per sample (with and
    without memory, the latter named comet-nomem), untrained and full one each."""
    rows = []
    c = chunk_size
    for (n, _), samples in cells.items():
        for i, s in enumerate(samples):
            t0 = time.monotonic()
            ids = lm_ids(system.tok, s)
            k = max(0, min(n // c, len(ids) // c - 1))
            if system.model is None:
                variants = {"full": nll_full_attention(system.lm, ids, k * c + 1, (k + 1) * c, system.window)}
            else:
                variants = {system.name: nll_with_memory(system.model, ids, k)}
                if system.name == "comet":
                    variants["comet-nomem"] = nll_with_memory(system.model, ids, k, memory=False)
            dt = round(time.monotonic() - t0, 2)
            for name, (nll, m) in variants.items():
                row = {"task": "lm", "precision": system.precision, "system": name, "length": n, "depth": None,
                       "sample": i, "tokens": (k + 1) * c, "k": k, "nll": nll, "scored": m,
                       "ppl": math.exp(nll / m), "seconds": dt}
                if name == "full":
                    row["truncated"] = (k + 1) * c - 1 > system.window
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


# --- summaries ---------------------------------------------------------------------------------------------

def summarize(rows: list[dict]) -> list[dict]:
    """One record per (precision, system, length, depth) cell and, for tasks with depths, one per
    (precision, system, length) over all depths (depth "all"). Scores: acc (passkey), em and f1
    (needle_qa), ppl over all scored tokens (lm)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r["precision"], r["system"], r["length"])
        groups[(*key, r["depth"])].append(r)
        if r["depth"] is not None:
            groups[(*key, "all")].append(r)
    out = []
    for (p, s, n, d), rs in groups.items():
        rec: dict[str, Any] = {"task": rs[0]["task"], "precision": p, "system": s, "length": n, "depth": d,
                               "n": len(rs)}
        for m in ("acc", "em", "f1"):
            if m in rs[0]:
                rec[m] = sum(r[m] for r in rs) / len(rs)
        if "nll" in rs[0]:
            scored = sum(r["scored"] for r in rs)
            rec["ppl"] = math.exp(sum(r["nll"] for r in rs) / scored)
            rec["scored"] = scored
            rec["k"] = rs[0]["k"]
        if "truncated" in rs[0]:
            rec["truncated"] = sum(r["truncated"] for r in rs) / len(rs)
        out.append(rec)
    return out


def check_targets(summary: list[dict]) -> list[dict]:
    """The issue's targets for the comet system, per precision and length:
    passkey: accuracy >= 95% at every depth;
    needle_qa: F1 at most 5 points below full attention where the input fits the window, and at least
    20 points ("far") above it where it does not."""
    idx = {(r["precision"], r["system"], r["length"], r["depth"]): r for r in summary}
    out = []
    for r in summary:
        if r["system"] != "comet" or r["depth"] != "all":
            continue
        p, n = r["precision"], r["length"]
        if r["task"] == "passkey":
            worst = min(x["acc"] for x in summary if (x["precision"], x["system"], x["length"]) == (p, "comet", n)
                        and x["depth"] != "all")
            out.append({"task": "passkey", "precision": p, "length": n,
                        "rule": f"acc >= {PASSKEY_MIN:.0%} at every depth", "value": worst,
                        "pass": worst >= PASSKEY_MIN})
        elif r["task"] == "needle_qa":
            full = idx.get((p, "full", n, "all"))
            if full is None:
                continue
            gap = r["f1"] - full["f1"]
            fits = not full.get("truncated")
            rule = f"F1 >= full - {WITHIN * 100:.0f}" if fits else f"F1 >= full + {FAR_ABOVE * 100:.0f}"
            ok = gap >= -WITHIN if fits else gap >= FAR_ABOVE
            out.append({"task": "needle_qa", "precision": p, "length": n, "rule": rule, "value": r["f1"],
                        "full": full["f1"], "gap": gap, "pass": ok})
    return out


def estimate_seconds(task: str, system: str, precision: str, lengths: list[int], n_depths: int, samples: int,
                     max_new_tokens: int = 32, window: int = 8192, chunk_size: int = 512) -> float:
    """Rough run time of one system on this task (2 CPU cores, SmolLM2-135M speeds), without loading."""
    read, pre = READ_TOK_S.get(precision, 400.0), PREFILL_TOK_S.get(precision, 400.0)
    dec = DECODE_TOK_S.get(precision, 30.0)
    answer_tokens = max_new_tokens if system == "untrained" else min(max_new_tokens, 12)
    total = 0.0
    for n in lengths:
        if task == "lm":
            k = n // chunk_size
            if system == "full":
                t = min((k + 1) * chunk_size, window) / pre
            else:
                t = (k + 1 + (system == "comet")) * chunk_size / read
            total += t * samples
        else:
            t = min(n, window) / pre if system == "full" else n / read
            total += (t + answer_tokens / dec + 0.2) * n_depths * samples
    return total


def heatmap(summary: list[dict], path: str | Path, metric: str = "acc", title: str = "passkey accuracy") -> None:
    """A PNG heat map per (precision, system): lengths x depths, each cell annotated with its %."""
    import numpy as np
    from matplotlib.figure import Figure

    cells = [r for r in summary if r["depth"] not in (None, "all") and metric in r]
    if not cells:
        raise ValueError("nothing to draw")
    precisions = list(dict.fromkeys(r["precision"] for r in cells))
    systems = list(dict.fromkeys(r["system"] for r in cells))
    lengths = sorted({r["length"] for r in cells})
    depths = sorted({r["depth"] for r in cells})
    val = {(r["precision"], r["system"], r["length"], r["depth"]): r[metric] for r in cells}
    fig = Figure(figsize=(1.2 + 0.55 * len(depths) * len(systems), 0.8 + 0.5 * len(lengths) * len(precisions)
                          + 0.6 * len(precisions)), layout="constrained")
    axes = fig.subplots(len(precisions), len(systems), squeeze=False)
    im = None
    for i, p in enumerate(precisions):
        for j, s in enumerate(systems):
            ax = axes[i][j]
            grid = np.array([[val.get((p, s, n, d), np.nan) * 100 for d in depths] for n in lengths])
            im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="lower")
            for a in range(len(lengths)):
                for b in range(len(depths)):
                    if not np.isnan(grid[a, b]):
                        ax.text(b, a, f"{grid[a, b]:.0f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_yticks(range(len(lengths)), [fmt_length(n) for n in lengths], fontsize=7)
            ax.set_xlabel("needle depth", fontsize=8)
            if j == 0:
                ax.set_ylabel("context tokens", fontsize=8)
            ax.set_title(f"{s} ({p})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="%", shrink=0.8)
    fig.savefig(path, dpi=120)
