"""Evaluation: passkey retrieval, facts, needle QA and language modelling, CoMeT against two baselines.

Systems. Each is loaded fresh through ``engine.load``, one after another, so the trained LoRA (which wraps
the backbone's q/v projections in place) never touches a baseline's backbone:
  comet      the base model with the trained adapter (memory nets, beacon embeddings, LoRA);
  untrained  the same model with a fresh adapter of the same settings (``adapter=None`` with the adapter's
             config, seed 0: random memory nets, LoRA with B = 0), i.e. the base model plus untrained memory;
  full       the base model alone (``memory=False``), full attention over the input left-truncated to its
             window (``max_position_embeddings``: 8,192 for SmolLM2). Longer inputs lose their beginning.

Every system answers the same samples: one seeded rng per (task, length, depth) cell, drawn with
``make_sample(..., split="eval")`` (source text the training never saw). The framing is the same for all:
the raw context, then ``question_ids`` (the question in the chat template, assistant turn opened), greedy
decoding. CoMeT reads and answers as the CLI does (``Engine.read``, then ``Engine.answer``: the answer
layout of ``answer.py``, where the pending tail beyond the priming length is read into memory first).

Scores. passkey: the key appears in the answer (``tasks.score``). incident (a service log in which one job
fails, asked why): a word that names the cause appears in the answer. needle_qa: SQuAD exact match and token F1
against every gold answer. lm: perplexity of the tokens of chunk k+1 of a held-out play or essay given the
k chunks before it (k = length // chunk_size), with memory (CoMeT reads k chunks, then scores chunk k+1 as
the live chunk, teacher-forced), without memory (chunk k+1 alone on an empty state, same adapter:
``comet-nomem``) and with full attention (everything before, truncated to the window). The first token of
chunk k+1 is not scored (nothing precedes it inside the live chunk), so every variant scores the same
chunk_size - 1 tokens. summary: token F1 (as needle_qa's) of the answer against the summary the base model
wrote with the whole passage in its window (tasks/summaries.py: the distillation target). The full system
asks for a summary as the teacher was asked, in a bare user turn: at the teacher's precision (bf16) it
writes the teacher's words, and scores below 1 (0.92 on 3 passages) only because the teacher's summaries
were cut after their last full sentence and the answers scored here are not.

Lengths are in tokens of the model's tokenizer. Parsing lengths and drawing the heat map belong to the CLI
(``comet_cli/eval_cmd.py``, ``comet_cli/plot.py``).
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from .adapter import read_adapter
from .config import CometConfig
from .engine import Engine, load
from .generate import repeat_bans
from .memory import MemoryState
from .model import CometModel
from .prompt import NO_REPEAT_NGRAM, followup_ids, question_ids, stop_ids
from .tasks import Sample, documents, make_lm, make_sample, score
from .tasks.summaries import eval_samples, load_summaries

SYSTEMS = ("comet", "untrained", "full")
TASKS = ("passkey", "fact", "needle_qa", "incident", "lm", "summary")
SPLITS = ("eval", "train")  # eval: held out; train: what the training draws (make_cells)
DOCUMENTS = {"passkey": ("essays", "plays"), "fact": ("essays", "plays"), "needle_qa": ("squad", "essays"),
             "incident": (), "lm": ("plays", "essays"), "summary": ("plays", "essays")}  # incident: written here
PREFILL = 8192  # tokens per forward when the full-attention baseline prefills (SmolLM2: one forward)
FAR_ABOVE = 0.20  # needle-QA / fact beyond the window: CoMeT must beat full attention by this much
WITHIN = 0.05  # needle-QA inside the window: CoMeT's F1 may trail full attention by at most this much
PASSKEY_MIN = 0.95  # passkey: accuracy at every depth
AGAINST_FULL = {"needle_qa": ("f1", "F1", WITHIN), "fact": ("acc", "acc", 0.0),  # task: metric, label, tolerance
                "incident": ("acc", "acc", 0.0)}


# --- systems -------------------------------------------------------------------------------------------

def adapter_config(adapter: str | Path) -> CometConfig:
    """The memory settings an adapter was trained with (the untrained system gets the same)."""
    return CometConfig.from_dict(read_adapter(adapter)[0]["config"])


def check_data(task: str) -> None:
    """Raise DataMissingError (naming scripts/fetch_data.py) if the documents `task` draws from are missing:
    cheap next to loading a model, so a run checks it first."""
    for family in DOCUMENTS[task]:
        documents(family, "eval")
    if task == "summary":
        load_summaries("eval")


def load_system(name: str, model: str | None, precision: str, adapter: str | Path, *, device: str | None = None,
                threads: int | None = None) -> Engine:
    """A fresh backbone load with the trained adapter (comet), a fresh adapter of the same settings
    (untrained) or no memory (full)."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose from {SYSTEMS}")
    kw = {"device": device, "threads": threads}
    if name == "comet":
        return load(model, precision, adapter, **kw)
    if name == "untrained":
        return load(model, precision, None, config=adapter_config(adapter), seed=0, **kw)
    return load(model, precision, memory=False, **kw)


def window(engine: Engine) -> int:
    """The backbone's position window (full attention sees at most this many tokens)."""
    return int(engine.lm.config.max_position_embeddings)


# --- answering -----------------------------------------------------------------------------------------

def answer_with_memory(engine: Engine, context: str, question: str, max_new_tokens: int = 32,
                       priming: int | None = None) -> str:
    """Read the context as the CLI does, then answer greedily from memory (engine.answer: the answer
    layout of answer.py; priming None: the adapter's own)."""
    return engine.answer(engine.read(context), question, priming=priming, max_new_tokens=max_new_tokens)


def heldout_accuracy(engine: Engine, task: str, n_tokens: int, samples: int, seed: int = 0,
                     max_new_tokens: int = 16, depth: float | None = None) -> tuple[float, list[dict]]:
    """Generated answers to `samples` eval-split samples of `task` with n_tokens of context (the needle at
    `depth`, default anywhere), in the answer layout the CLI uses; the same samples for the same (task,
    n_tokens, seed, depth). Returns (accuracy, rows)."""
    rng = random.Random(f"heldout:{task}:{seed}:{n_tokens}" + ("" if depth is None else f":{depth}"))
    rows = []
    for _ in range(samples):
        s = make_sample(task, engine.tok, n_tokens, rng, "eval", depth)
        pred = answer_with_memory(engine, s.context, s.question, max_new_tokens)
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
                          max_new_tokens: int = 32, no_repeat_ngram: int = NO_REPEAT_NGRAM,
                          system_turn: bool = True) -> str:
    """The base model alone: context ids + question ids, left-truncated to `window - max_new_tokens`
    tokens, then greedy decoding with a KV cache, under the same no-repeat rule as comet's answers.
    system_turn=False asks in a bare user turn (prompt.followup_ids), without the default system turn that
    the chat template puts between the text and the question (SmolLM2 then often ignores the text)."""
    if max_new_tokens >= window:
        raise ValueError(f"max_new_tokens={max_new_tokens} does not fit a window of {window}")
    turn = question_ids(tok, question) if system_turn else followup_ids(tok, question)
    ids = tok.encode(context, add_special_tokens=False) + turn
    ids = ids[-(window - max_new_tokens):]
    logits, cache = prefill(lm, ids)
    stops, n_vocab, out = set(stop_ids(tok, lm.config)), len(tok), []
    for i in range(max_new_tokens):
        logits = logits[-1]
        logits[n_vocab:] = float("-inf")
        logits[repeat_bans(out, no_repeat_ngram)] = float("-inf")
        t = int(logits.argmax())
        if t in stops:
            break
        out.append(t)
        if i == max_new_tokens - 1:
            break
        x = torch.tensor([[t]], device=lm.device)
        logits = lm(input_ids=x, cache=cache, use_cache=True).logits[0].float()
    return tok.decode(out, skip_special_tokens=True)


def answer(engine: Engine, sample: Sample, max_new_tokens: int = 32) -> str:
    """The answer of a system to a sample: from memory, or (an engine without memory) full attention."""
    if engine.model is None:  # a summary is asked as its teacher was asked (tasks/summaries.py)
        return answer_full_attention(engine.lm, engine.tok, sample.context, sample.question, window(engine),
                                     max_new_tokens, system_turn=sample.task != "summary")
    return answer_with_memory(engine, sample.context, sample.question, max_new_tokens)


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
               chunk_size: int = 512, split: str = "eval") -> Cells:
    """`samples` samples of `split` per (length, depth) cell, each cell from its own seeded rng (adding a
    length or a depth does not change the other cells). lm cells have depth None and carry at least
    2 * chunk_size tokens of continuation; summary cells have depth None and are the file's first
    `samples` eval passages of that length (tasks.summaries.eval_samples: none twice). split "train" draws
    what the training draws (its wordings, names and formats): held-out accuracy against it is the gap
    between what was learned and what generalises. The eval cells are the same whatever else is asked."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if split not in SPLITS or (split == "train" and task in ("lm", "summary")):
        raise ValueError(f"split {split!r} is not available for {task}")
    cells: Cells = {}
    for n in lengths:
        for d in ([None] if task in ("lm", "summary") or not depths else depths):
            rng = random.Random(f"{task}:{seed}:{n}:{d}" + ("" if split == "eval" else f":{split}"))
            if task == "lm":
                cells[(n, d)] = [make_lm(tok, n, rng, "eval", answer_tokens=2 * chunk_size) for _ in range(samples)]
            elif task == "summary":
                cells[(n, d)] = eval_samples(n, samples)
            else:
                cells[(n, d)] = [make_sample(task, tok, n, rng, split, d) for _ in range(samples)]
    return cells


def run_answers(system: str, engine: Engine, task: str, cells: Cells, max_new_tokens: int = 32,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Answer every sample of every cell with `engine` (the system named `system`); one row per sample
    with the task's scores."""
    rows = []
    for (n, d), samples in cells.items():
        for i, s in enumerate(samples):
            t0 = time.monotonic()
            pred = answer(engine, s, max_new_tokens)
            row = {"task": task, "precision": engine.precision, "system": system, "length": n, "depth": d,
                   "sample": i, "tokens": s.meta.get("n_tokens"), "answers": list(s.answers or [s.answer]),
                   "prediction": pred, **score(s, pred), "seconds": round(time.monotonic() - t0, 2)}
            if engine.model is None:
                need = engine.count_tokens(s.context) + len(question_ids(engine.tok, s.question)) + max_new_tokens
                row["truncated"] = need > window(engine)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def run_lm(system: str, engine: Engine, cells: Cells, chunk_size: int,
           on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Perplexity rows of chunk k+1 (k = length // chunk_size): comet gives two rows per sample (with and
    without memory, the latter named comet-nomem), untrained and full one each."""
    rows = []
    c = chunk_size
    for (n, _), samples in cells.items():
        for i, s in enumerate(samples):
            t0 = time.monotonic()
            ids = lm_ids(engine.tok, s)
            k = max(0, min(n // c, len(ids) // c - 1))
            if engine.model is None:
                variants = {system: nll_full_attention(engine.lm, ids, k * c + 1, (k + 1) * c, window(engine))}
            else:
                variants = {system: nll_with_memory(engine.model, ids, k)}
                if system == "comet":
                    variants["comet-nomem"] = nll_with_memory(engine.model, ids, k, memory=False)
            dt = round(time.monotonic() - t0, 2)
            for name, (nll, m) in variants.items():
                row = {"task": "lm", "precision": engine.precision, "system": name, "length": n, "depth": None,
                       "sample": i, "tokens": (k + 1) * c, "k": k, "nll": nll, "scored": m,
                       "ppl": math.exp(nll / m), "seconds": dt}
                if engine.model is None:
                    row["truncated"] = (k + 1) * c - 1 > window(engine)
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


# --- summaries ---------------------------------------------------------------------------------------------

def summarize(rows: list[dict]) -> list[dict]:
    """One record per (precision, system, length, depth) cell and, for tasks with depths, one per
    (precision, system, length) over all depths (depth "all"). Scores: acc (passkey, fact), em and f1
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
    """The project's targets for the comet system, per precision and length:
    passkey: accuracy >= 95% at every depth;
    needle_qa: F1 at most 5 points below full attention where the input fits the window, and at least
    20 points ("far") above it where it does not;
    fact, incident: accuracy at least that of full attention where the input fits the window, at least 20
    points above it where it does not."""
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
        elif r["task"] in AGAINST_FULL:
            metric, label, within = AGAINST_FULL[r["task"]]
            full = idx.get((p, "full", n, "all"))
            if full is None:
                continue
            gap, fits = r[metric] - full[metric], not full.get("truncated")
            rule = (f"{label} >= full" + (f" - {within * 100:.0f}" if within else "")) if fits \
                else f"{label} >= full + {FAR_ABOVE * 100:.0f}"
            out.append({"task": r["task"], "precision": p, "length": n, "rule": rule, "value": r[metric],
                        "full": full[metric], "gap": gap, "pass": gap >= -within if fits else gap >= FAR_ABOVE})
    return out
