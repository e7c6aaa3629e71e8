"""The task generators. Every generator takes a Hugging Face tokenizer, a target context length in
tokens, an ``rng`` (``random.Random``: the only source of randomness, so a seed fixes the sample) and a
``split`` (``"train"`` or ``"eval"``); filler, needles and questions all come from that split only."""

from __future__ import annotations

import functools
import random
import re
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .corpus import SPLITS, _docs_cached, _hash01, _root, _split_items, _squad
from .haystack import (
    LENGTH_TOLERANCE,
    TooShort,
    _depth,
    _haystack,
    _Insert,
    _ntok,
    _prose_stream,
    _Stream,
    _Unit,
    _units,
)
from .values import article, open_pools

TASKS: tuple[str, ...] = ("passkey", "fact", "needle_qa", "multi_needle", "vartrack", "recall", "lm", "summary",
                          "incident")


@dataclass
class Sample:
    context: str  # the long document text that is read into memory
    question: str  # the user's question ("" for task "lm": continue the document)
    answer: str  # the target answer (no end-of-turn token)
    task: str  # one of TASKS
    answers: list[str] = field(default_factory=list)  # all gold answers (needle_qa), else [answer]
    meta: dict[str, Any] = field(default_factory=dict)  # diagnostics: depth(s), doc ids, token count
    turns: list[tuple[str, str]] = field(default_factory=list)  # more (question, answer) pairs about the same
    #                                                          context, asked after the first (training)


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------

# Phrasings, names and values are data: phrasing.toml. Training composes its passkey needles and
# questions from parts (an opener, the statement, a repeat of the key: every needle states it twice, as
# in Landmark Attention's; a lead, the question, a format), so the model meets many wordings and learns
# the key, not a template; training facts likewise join an opener to one of a dozen statements per relation,
# and a lead, a question and a format. The eval split uses whole sentences that no composition of the
# training parts produces (a test checks), so an evaluation also asks in words the training never showed.
_PHRASING = tomllib.loads((Path(__file__).parent / "phrasing.toml").read_text(encoding="utf-8"))
_PK = _PHRASING["passkey"]
_PASSKEY_PARTS = {k: tuple(_PK["train"][k]) for k in ("opener", "statement", "repeat")}
_PASSKEY_QUESTION_PARTS = {k: tuple(_PK["train"][k]) for k in ("lead", "ask", "format")}
_PASSKEY_EVAL_NEEDLES, _PASSKEY_EVAL_QUESTIONS = tuple(_PK["eval"]["needles"]), tuple(_PK["eval"]["questions"])
_PASSKEY_INTROS = {split: tuple(_PK[split]["intros"]) for split in ("train", "eval")}
_POOLS = {k: tuple(v) for k, v in _PHRASING["fact"]["pools"].items()}
_FIRST, _LAST, _CITIES, _JOBS, _PET_NAMES = (_POOLS[k] for k in ("first", "last", "cities", "jobs", "pet_names"))
_PETS, _COLORS, _OBJECTS, _ITEMS, _DAYS = (_POOLS[k] for k in ("pets", "colors", "objects", "items", "days"))
# relation -> (answer field, {split: (statements, questions)})
_FACTS = {name: (r["answer"], {split: (tuple(r[f"{split}_statements"]), tuple(r[f"{split}_questions"]))
                               for split in ("train", "eval")})
          for name, r in _PHRASING["fact"]["relations"].items()}
_FACT_WEIGHTS = {name: float(r.get("train_weight", 1)) for name, r in _PHRASING["fact"]["relations"].items()}
_FACT_PARTS = {k: tuple(v) for k, v in _PHRASING["fact"]["train"].items()}  # opener, lead, format
_MN = _PHRASING["multi_needle"]
_WORDS, _CODE_NEEDLES, _CODE_QUESTIONS = tuple(_MN["words"]), tuple(_MN["needles"]), tuple(_MN["questions"])
_VT_INTROS, _VT_QUESTIONS = tuple(_PHRASING["vartrack"]["intros"]), tuple(_PHRASING["vartrack"]["questions"])
_RECALL_QUESTIONS = tuple(_PHRASING["recall"]["questions"])


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _compose_needle(rng: random.Random) -> str:
    p = _PASSKEY_PARTS
    return _capital(rng.choice(p["opener"]) + rng.choice(p["statement"])) + rng.choice(p["repeat"])


def _compose_question(rng: random.Random) -> str:
    p = _PASSKEY_QUESTION_PARTS
    return _capital(rng.choice(p["lead"]) + rng.choice(p["ask"])) + rng.choice(p["format"])


_TRAIN_DIGITS = (4, 5, 6, 7, 8)  # passkey lengths of the train split (eval: 5 digits 60%, else 4, 6 or 7)


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def make_passkey(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                 depth: float | None = None) -> Sample:
    """Landmark-Attention passkey retrieval over real essay/play text, with varied phrasing (training
    composes its wordings from parts; the eval split's needles, questions and intros are worded in ways no
    training composition produces)."""
    root = _root()
    d = _depth(rng, depth)
    if split == "train":  # long keys more often than eval: 6-7 digit keys were missed beyond their share
        digits = rng.choice(_TRAIN_DIGITS)
    else:
        digits = 5 if rng.random() < 0.6 else rng.choice((4, 6, 7))
    key = _number(rng, digits)
    if split == "train":
        needle, question = _compose_needle(rng).format(k=key), _compose_question(rng)
    else:
        needle, question = rng.choice(_PASSKEY_EVAL_NEEDLES).format(k=key), rng.choice(_PASSKEY_EVAL_QUESTIONS)
    intro = rng.choice(_PASSKEY_INTROS[split]) if rng.random() < 0.5 else None
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, [_Insert(d, needle)], intro)
    meta.update(depth=meta["depths"][0], needle=needle, requested_depth=d,
                needle_end=meta["char_positions"][0] + len(needle))
    return Sample(context, question, key, "passkey", [key], meta)


# Facts: one plain sentence about a named person or thing, hidden in unrelated prose, asked in plain
# words. Names and values are split by hash (an eval sample's people, cities and pets never appear in
# training), and so are the phrasings: each relation has train and eval statements and questions.
_FACT_EVAL_FRACTION = 0.25  # of each pool of names and values (small pools: a quarter keeps eval varied)
_TOML_POOLS = {"city": _CITIES, "job": _JOBS, "pet_name": _PET_NAMES, "last": _LAST, "color": _COLORS}


def _is_eval(x: str) -> bool:
    return _hash01(f"fact:{x}") < _FACT_EVAL_FRACTION


def _value(rng: random.Random, field: str, split: str) -> str:
    """A value of `field` for a fact of `split`: eval draws the toml pool's eval-only quarter (colours:
    the whole small pool), training draws `_train_pool` (thousands: no prior over a few dozen answers)."""
    if split != "eval":
        return rng.choice(_train_pool(field))
    return rng.choice(_COLORS) if field == "color" else _pick(rng, _TOML_POOLS[field], split)


def _pick(rng: random.Random, pool: tuple[str, ...], split: str) -> str:
    """A member of `pool` whose split (by hash) is `split` (eval items are never used in training)."""
    return rng.choice(_split_pool(pool, split))


@functools.cache
def _split_pool(pool: tuple[str, ...], split: str) -> tuple[str, ...]:
    return tuple(x for x in pool if _is_eval(x) == (split == "eval"))


@functools.cache
def _train_pool(field: str) -> tuple[str, ...]:
    """Training values of `field`: the toml pool's training share and values.open_pools() (thousands),
    less every value that shares a word with an eval value (no 'newspaper journalist' in training when
    'journalist' is asked in eval)."""
    toml = _TOML_POOLS[field]
    held = {w for pool in (_CITIES, _JOBS, _PET_NAMES, _LAST) for x in _split_pool(pool, "eval") for w in _words(x)}
    mine = _split_pool(toml, "train") if field != "color" else toml  # colours are shared (a small pool)
    wide = [x for x in open_pools()[field] if not held & _words(x)]
    return tuple(sorted(set(mine) | set(wide)))


def _words(value: str) -> set[str]:
    """'Ann-Kathrin Berg' -> {'ann', 'kathrin', 'berg'}."""
    return {w.lower() for w in re.split(r"[ -]", value)}


def _fact(rng: random.Random, split: str, taken: set[str]) -> tuple[str, str, str, str, dict]:
    """(relation, statement, question, answer, fields) of one fact about a person not in `taken`."""
    names = sorted(_FACTS)
    if split == "eval":  # uniform, and the same draws as always
        relation = rng.choice(names)
    else:  # relations held out least often right are drawn more (phrasing.toml train_weight)
        relation = rng.choices(names, [_FACT_WEIGHTS[n] for n in names])[0]
    key, templates = _FACTS[relation]
    statements, questions = templates[split]
    while True:
        name = f"{rng.choice(_FIRST)} {_value(rng, 'last', split)}"
        if name not in taken:
            break
    f = {"name": name, "city": _value(rng, "city", split), "year": str(rng.randint(1950, 2023)),
         "job": _value(rng, "job", split), "pet": rng.choice(_PETS), "pet_name": _value(rng, "pet_name", split),
         "color": _value(rng, "color", split), "obj": rng.choice(_OBJECTS), "n": str(rng.randint(12, 9800)),
         "item": rng.choice(_ITEMS), "day": rng.choice(_DAYS)}
    while f["pet_name"] in name:  # a training pet may not share its owner's name (eval pools never do)
        f["pet_name"] = _value(rng, "pet_name", split)
    f["a_job"] = article(f["job"])
    if split == "eval":  # whole sentences (and the same draws as always, so eval samples stay the same)
        return relation, rng.choice(statements).format(**f), rng.choice(questions).format(**f), f[key], f
    return relation, _compose_fact(rng, statements, f), _compose_fact_question(rng, questions, f), f[key], f


def _compose_fact(rng: random.Random, statements: tuple[str, ...], f: dict) -> str:
    return _capital(rng.choice(_FACT_PARTS["opener"]) + rng.choice(statements).format(**f))


def _compose_fact_question(rng: random.Random, questions: tuple[str, ...], f: dict) -> str:
    p = _FACT_PARTS
    return _capital(rng.choice(p["lead"]) + rng.choice(questions).format(**f)) + rng.choice(p["format"])


def make_fact(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
              depth: float | None = None) -> Sample:
    """One sentence of fact (a person's city, job, pet, a thing's color, a count, a day) hidden in
    unrelated prose, asked in plain words; the answer is a short entity (a name, a word or a number).
    Training samples hide one to three facts about different people and ask about each (`turns`), so one
    read teaches several answers; eval samples hide one. ``depth`` places the asked fact."""
    root = _root()
    d = _depth(rng, depth)
    k = 1 if split == "eval" else rng.choice((1, 2, 3))
    facts = []
    for _ in range(k):
        facts.append(_fact(rng, split, {f[4]["name"] for f in facts}))
    depths = [d] + [rng.random() for _ in facts[1:]]
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, [_Insert(x, f[1]) for x, f in zip(depths, facts,
                                                                                               strict=True)])
    relation, needle, question, answer, fields = facts[0]
    order = sorted(range(k), key=lambda i: depths[i])  # meta lists the inserts in depth order
    ends = [meta["char_positions"][j] + len(facts[i][1]) for j, i in enumerate(order)]
    meta.update(depth=meta["depths"][order.index(0)], needle=needle, relation=relation, fields=fields,
                requested_depth=d, needle_end=max(ends))  # every asked fact ends before needle_end
    return Sample(context, question, answer, "fact", [answer], meta, turns=[(f[2], f[3]) for f in facts[1:]])


def make_needle_qa(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                   depth: float | None = None) -> Sample:
    """A SQuAD paragraph (at most 60% of ``n_tokens``) hidden as its own paragraph among unrelated
    Wikipedia (HotpotQA) paragraphs (60%) or essays (40%). ``answers`` holds every gold answer."""
    root = _root()
    d = _depth(rng, depth)
    arts = [a for a in _split_items(_squad(root), split) if any(q for _, q in a.paragraphs)]
    if not arts:
        raise ValueError(f"no answerable SQuAD questions in split {split!r}")
    for _ in range(50):  # a paragraph that leaves room for filler
        art = rng.choice(arts)
        ctx, qas = rng.choice([(c, qs) for c, qs in art.paragraphs if qs])
        if _ntok(tokenizer, ctx) <= 0.6 * n_tokens:
            break
    else:
        raise TooShort(f"n_tokens={n_tokens} is too small for SQuAD paragraphs")
    qa = rng.choice(qas)
    if rng.random() < 0.6:
        pool = _docs_cached(root, "wiki", split)
        if not pool:  # no hotpotqa.json: other SQuAD articles' paragraphs
            pool = tuple(x for x in _docs_cached(root, "squad", split) if not x.id.startswith(art.id + "#"))
        stream = _Stream(tokenizer, root, pool or _docs_cached(root, "essays", split), rng)
        filler = "wiki"
    else:
        stream = _Stream(tokenizer, root, _docs_cached(root, "essays", split), rng)
        filler = "essays"
    context, meta = _haystack(tokenizer, n_tokens, stream, [_Insert(d, ctx, "para")])
    meta.update(depth=meta["depths"][0], squad_article=art.id, filler=filler, requested_depth=d)
    return Sample(context, qa.question, qa.answers[0], "needle_qa", list(qa.answers), meta)


def make_multi_needle(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                      depth: float | None = None) -> Sample:
    """2-4 "The code for <word> is <number>." facts at random depths; the question asks for one.
    With ``depth`` given, the asked-for fact is placed at that depth."""
    root = _root()
    k = rng.randint(2, 4)
    words = rng.sample(_WORDS, k)
    numbers: list[str] = []
    while len(numbers) < k:
        n = _number(rng, rng.choice((4, 5, 5, 6, 7)))
        if n not in numbers:
            numbers.append(n)
    target = rng.randrange(k)
    depths = [rng.random() for _ in range(k)]
    if depth is not None:
        depths[target] = _depth(rng, depth)
    inserts = [_Insert(dd, rng.choice(_CODE_NEEDLES).format(w=w, n=n))
               for dd, w, n in zip(depths, words, numbers, strict=True)]
    question = rng.choice(_CODE_QUESTIONS).format(w=words[target])
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, inserts)
    order = sorted(range(k), key=lambda i: depths[i])
    meta.update(facts=dict(zip(words, numbers, strict=True)), key=words[target],
                depth=meta["depths"][order.index(target)])
    return Sample(context, question, numbers[target], "multi_needle", [numbers[target]], meta)


def make_vartrack(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                  depth: float | None = None) -> Sample:
    """RULER-style variable tracking: ``VAR A = 12345.`` then ``VAR B = VAR A.`` ... spread through
    real text; one distractor chain half the time. Answer: the target chain's names, comma-separated,
    in order of assignment. With ``depth`` given, the target chain starts at that depth."""
    root = _root()
    n_chains = 2 if rng.random() < 0.5 else 1
    names: list[str] = []
    values: list[str] = []
    chains: list[list[str]] = []
    for _ in range(n_chains):
        hops = rng.randint(2, 4)
        chain = []
        while len(chain) < hops + 1:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
                chain.append(name)
        chains.append(chain)
        v = _number(rng, 5)
        while v in values:
            v = _number(rng, 5)
        values.append(v)
    inserts: list[_Insert] = []
    for c, (chain, v) in enumerate(zip(chains, values, strict=True)):
        if c == 0 and depth is not None:
            start = _depth(rng, depth)
            ds = [start] + sorted(start + (1 - start) * rng.random() for _ in chain[1:])
        else:
            ds = sorted(rng.random() for _ in chain)
        for j, name in enumerate(chain):
            rhs = v if j == 0 else f"VAR {chain[j - 1]}"
            inserts.append(_Insert(ds[j], f"VAR {name} = {rhs}."))
    intro = rng.choice(_VT_INTROS) if rng.random() < 0.5 else None
    question = rng.choice(_VT_QUESTIONS).format(v=values[0])
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, inserts, intro)
    answer = ", ".join(chains[0])
    meta.update(chains=[list(c) for c in chains], values=values)
    return Sample(context, question, answer, "vartrack", [answer], meta)


def make_recall(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                depth: float | None = None) -> Sample:
    """Verbatim recall: the question quotes 5-10 words of the context (a cue at ``depth``) and the
    answer is the 16-48 words that follow them there (fewer where the text is short): about ten times a
    passkey's answer tokens per sample, each predictable from memory beyond what the language prior guesses."""
    root = _root()
    d = _depth(rng, depth)
    stream = _prose_stream(tokenizer, root, rng, split)
    context, meta = _haystack(tokenizer, n_tokens, stream, [])
    words = [(m.start(), m.group()) for m in re.finditer(r"\S+", context)]
    n_cue, n_ans = rng.randint(5, 10), rng.randint(16, 48)
    n_ans = min(n_ans, len(words) - n_cue)  # a short text (verse: few words per token) quotes less
    if n_ans < 16:
        raise TooShort(f"n_tokens={n_tokens} is too small for a recall sample")
    i = round(d * (len(words) - n_cue - n_ans))
    cue = " ".join(w for _, w in words[i:i + n_cue])
    answer = " ".join(w for _, w in words[i + n_cue:i + n_cue + n_ans])
    last = words[i + n_cue + n_ans - 1]
    meta.update(depth=words[i][0] / max(1, len(context)), cue=cue, requested_depth=d,
                needle_end=last[0] + len(last[1]))
    return Sample(context, rng.choice(_RECALL_QUESTIONS).format(cue=cue), answer, "recall", [answer], meta)


def make_lm(tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
            depth: float | None = None, answer_tokens: int | None = None) -> Sample:
    """Language modelling: ``context`` is a passage of a play or essay, ``question`` is "" and
    ``answer`` is the text that follows it (64-256 tokens, at a word boundary, leading whitespace
    stripped). ``depth`` is ignored."""
    del depth
    root = _root()
    family = "plays" if rng.random() < 0.5 else "essays"
    docs = list(_docs_cached(root, family, split))
    want = answer_tokens if answer_tokens is not None else rng.randint(64, 256)
    first = None
    for _ in range(6):  # prefer one document that holds context + answer
        doc = rng.choice(docs)
        units = _units(tokenizer, root, doc)
        cum = 0
        suffix = [0] * (len(units) + 1)
        for i in range(len(units) - 1, -1, -1):
            cum += units[i].ntok
            suffix[i] = cum
        starts = [i for i, u in enumerate(units) if u.para and suffix[i] >= n_tokens + want + 8]
        if starts:
            first = (doc, rng.choice(starts))
            break
    stream = _Stream(tokenizer, root, docs, rng, first=first)
    units: list[_Unit] = []
    budget = n_tokens
    tol = max(2, int(LENGTH_TOLERANCE * n_tokens))
    context, nxt, rest, length = "", 0, "", 0
    for _ in range(5):
        units, nxt, rest = stream.take(budget)
        context = "".join(("" if i == 0 else u.sep) + u.text for i, u in enumerate(units))
        length = _ntok(tokenizer, context)
        if abs(length - n_tokens) <= tol:
            break
        budget += n_tokens - length
    # The continuation: the cut unit's remainder, then the following units.
    cont = [rest] if rest else []
    i = nxt
    while _ntok(tokenizer, "".join(cont)) < want and i < nxt + 400:
        u = stream.get(i)
        cont.append(u.sep + u.text)
        i += 1
    text = "".join(cont)
    words = re.split(r"(\s+)", text)
    lo, hi = 1, (len(words) + 1) // 2
    while lo < hi:  # shortest word prefix with >= want tokens
        mid = (lo + hi) // 2
        if _ntok(tokenizer, "".join(words[: 2 * mid - 1])) >= want:
            hi = mid
        else:
            lo = mid + 1
    answer = "".join(words[: 2 * lo - 1]).strip()
    meta = {"n_tokens": length, "doc_ids": sorted({u.doc for u in units if u.doc}),
            "answer_sep": text[: len(text) - len(text.lstrip())], "family": family}
    return Sample(context, "", answer, "lm", [answer], meta)


def _make_summary(*args: Any) -> Sample:
    from .summaries import make_summary  # (summaries.py builds on this module)

    return make_summary(*args)


def _make_incident(*args: Any) -> Sample:
    from .incidents import make_incident  # (incidents.py builds on this module)

    return make_incident(*args)


_MAKERS: dict[str, Callable[..., Sample]] = {
    "passkey": make_passkey,
    "fact": make_fact,
    "needle_qa": make_needle_qa,
    "multi_needle": make_multi_needle,
    "vartrack": make_vartrack,
    "recall": make_recall,
    "lm": make_lm,
    "summary": _make_summary,
    "incident": _make_incident,
}


def make_sample(task: str, tokenizer: Any, n_tokens: int, rng: random.Random, split: str = "train",
                depth: float | None = None) -> Sample:
    """One sample of ``task`` whose context has about ``n_tokens`` tokens (within ~1%, at least a few
    tokens; a ``summary`` passage has one of ``summaries.LENGTHS``: see ``make_summary``). Raises
    ``DataMissingError`` if the data folder (or, for ``summary``, its summaries file) is missing."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _MAKERS[task](tokenizer, n_tokens, rng, split, depth)
