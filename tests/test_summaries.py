"""Summaries to distil: the file scripts/make_summaries.py writes (resumable, damage-tolerant), the samples
training and evaluation draw from it, and training on them, on the synthetic data of test_data."""

from __future__ import annotations

import importlib.util
import json
import random
import re

import pytest
from test_data import _make_data, _split_tags, _tags
from tiny import save_tiny, tiny_tokenizer

from comet_core.config import CometConfig
from comet_core.tasks import DataMissingError, TooShort, make_sample, score
from comet_core.tasks.summaries import QUESTIONS, cut_summary, eval_samples, load_summaries, summaries_file
from comet_core.train.samples import draw_batch
from comet_core.train.trainer import TrainArgs, train

spec = importlib.util.spec_from_file_location("make_summaries", "scripts/make_summaries.py")
make_summaries = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_summaries)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_tiny(tmp_path_factory.mktemp("summaries") / "model"))


@pytest.fixture(autouse=True)
def _data(tmp_path, monkeypatch):
    """A data folder of its own for each test (the summaries files are written into it)."""
    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))


def lead(context: str, question: str) -> str:
    """A real extractive summariser (the passage's first two sentences), standing in for the teacher
    model, whose summaries the tiny random model cannot write."""
    del question
    return " ".join(re.findall(r"[^.!?]+[.!?]", context)[:2]).strip()


def test_cut_summary_keeps_whole_sentences():
    text = "The old king dies at the end of act one. His son flees to England and"
    assert cut_summary(text) == "The old king dies at the end of act one."
    assert cut_summary('At the door she said to them all: "go home." Then') == \
        'At the door she said to them all: "go home."'
    assert cut_summary("Too short. Really") is None and cut_summary("no sentence end at all here, none") is None


def test_the_file_resumes_drops_a_damaged_line_and_feeds_training_and_eval():
    tok = tiny_tokenizer()
    teacher = {"model": "lead-2"}
    assert make_summaries.write_split("train", tok, lead, [96, 200], 3, teacher, log=lambda s: None) == 6
    assert make_summaries.write_split("train", tok, lead, [96, 200], 3, teacher, log=lambda s: None) == 0
    path = summaries_file("train")
    path.write_text(path.read_text() + '{"key": "train:96:9", "cont')  # a write cut by a crash
    assert make_summaries.write_split("train", tok, lead, [96, 200], 4, teacher, log=lambda s: None) == 2
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["key"] for r in recs) == sorted(f"train:{n}:{i}" for n in (96, 200) for i in range(4))
    assert all(r["summary"] == cut_summary(lead(r["context"], "")) and r["question"] in QUESTIONS["train"]
               for r in recs)
    assert sum(r["summary"] is not None for r in recs) >= 6  # (a short verse passage may have no full sentence)
    make_summaries.write_split("eval", tok, lead, [96], 2, teacher, log=lambda s: None)
    assert set(QUESTIONS["eval"]).isdisjoint(QUESTIONS["train"])

    # training draws the largest passage that fits; the same seed, the same passage on every machine
    s = make_sample("summary", tok, 120, random.Random(0), "train")
    assert s.task == "summary" and abs(len(tok.encode(s.context, add_special_tokens=False)) - 96) <= 3
    assert s.answer == cut_summary(lead(s.context, "")) and score(s, s.answer)["f1"] == 1.0
    assert make_sample("summary", tok, 250, random.Random(0), "train").meta["key"].startswith("train:200:")
    with pytest.raises(TooShort):
        make_sample("summary", tok, 60, random.Random(0), "train")
    redo = make_summaries.draw_passage(tok, 96, random.Random(f"summary:{s.meta['key']}"), "train")
    assert redo[0] == s.context

    # evaluation: the file's first passages of exactly that length, none twice, in words training never used
    ev = eval_samples(96, 2)
    assert len({x.meta["key"] for x in ev}) == 2 and all(x.question in QUESTIONS["eval"] for x in ev)
    eval_tags = _split_tags("essays", "eval") | _split_tags("plays", "eval")
    assert all(_tags(x.context) and _tags(x.context) <= eval_tags for x in ev)
    assert not any(_tags(r["context"]) & eval_tags for r in recs)
    with pytest.raises(DataMissingError, match="2 summaries of 96-token passages, 3 asked.*--eval 4 --lengths 96"):
        eval_samples(96, 3)
    with pytest.raises(DataMissingError, match="no eval summaries of 120-token"):
        make_sample("summary", tok, 120, random.Random(0), "eval")

    # a step that draws summaries beside other tasks stays at its level, and trains every summary token
    cfg = CometConfig(chunk_size=64, stride=8, n_global=2, budget=8, priming=0)
    draws = draw_batch(tok, cfg, random.Random(3), 2, {"summary": 1.0, "passkey": 1.0}, 4)
    assert {d.task for d in draws} == {"summary", "passkey"}
    for d in draws:
        assert len(d.enc.chunks) == 2  # 96 tokens: a full chunk, then the rest read before the question
        if d.task == "summary":
            target = d.enc.live[len(d.enc.live) - d.enc.n_target:]
            assert tok.decode(target[:-1]).strip() in {r["summary"] for r in recs}


def test_a_missing_or_empty_file_says_which_script_makes_it(monkeypatch, tmp_path):
    monkeypatch.setenv("COMET_DATA", str(tmp_path))
    with pytest.raises(DataMissingError, match="make_summaries.py"):
        load_summaries("train")
    summaries_file("train").parent.mkdir()
    summaries_file("train").write_text(json.dumps({"key": "train:40:0", "length": 40, "summary": None}) + "\n")
    with pytest.raises(DataMissingError, match="holds no summaries"):
        load_summaries("train")


def test_the_script_runs_the_teacher_and_training_distils_it(model, tmp_path):
    """The script end to end with a real (tiny, random) teacher; then a training run on the summaries."""
    out = make_summaries.main(["--model", model, "--precision", "fp32", "--threads", "1", "--train", "2",
                               "--eval", "1", "--lengths", "40", "--max-new-tokens", "24"])
    assert out == 0
    recs = [json.loads(x) for x in summaries_file("train").read_text().splitlines()]
    assert [r["key"] for r in recs] == ["train:40:0", "train:40:1"]
    assert recs[0]["teacher"]["fingerprint"] and recs[0]["teacher"]["max_new_tokens"] == 24
    # the random teacher rarely ends a sentence: give one passage a summary for training to distil
    recs[0]["summary"] = "A passage of short sayings about rivers, stones and gardens."
    summaries_file("train").write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = TrainArgs(out=str(tmp_path / "run"), model=model, precision="fp32", chunk_size=32, n_global=2, budget=8,
                     lora_rank=2, steps=2, accum=2, warmup=1, eval_every=0, min_chunks=2, max_chunks=2,
                     tasks="summary:1")
    rec = train(args)
    assert rec["step"] == 2 and rec["loss"] == rec["loss"] and set(rec["tasks"]) == {"summary"}
