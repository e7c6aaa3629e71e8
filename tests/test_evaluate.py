"""comet eval: answering and scoring paths on a tiny model and synthetic data, and the CLI end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from test_data import _make_data
from tiny import save_tiny, tiny_lm, tiny_tokenizer

from comet_cli import plot
from comet_cli.eval_cmd import eval_group
from comet_cli.main import cli
from comet_cli.values import fmt_tokens, parse_choices, parse_depths, parse_lengths
from comet_core import evaluate as ev
from comet_core.adapter import save_adapter
from comet_core.config import CometConfig
from comet_core.engine import Engine
from comet_core.errors import CometError
from comet_core.generate import repeat_bans
from comet_core.loading import Loaded, load_model, model_fingerprint
from comet_core.model import CometModel
from comet_core.prompt import followup_ids, question_ids
from comet_core.tasks import DataMissingError, make_sample, normalize_answer, squad_f1

CFG = CometConfig(chunk_size=64, stride=8, n_global=4, budget=16, lora_rank=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _make_data(root / "data")
    save_tiny(root / "model")
    lm = load_model(str(root / "model"), "fp32").model
    model = CometModel.create(lm, CFG, seed=1)
    with torch.no_grad():  # a "trained" adapter that differs from the untrained one
        for k, p in model.mem.trainable().items():
            if k.endswith(".B"):
                p.normal_(0, 0.02)
    save_adapter(root / "adapter.safetensors", model, model_fingerprint(lm), "tiny")
    return root


@pytest.fixture(autouse=True)
def _data(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CLI leaves torch's threads alone then


def engine(lm, tok, model: CometModel | None = None) -> Engine:
    """An Engine around an in-memory backbone (and memory), as engine.load builds one."""
    return Engine(Loaded(lm, tok, "tiny", "fp32", torch.float32, torch.device("cpu")), model, None, None)


def test_parse_arguments():
    assert parse_lengths("4k,16k,64k,1M") == [4096, 16384, 65536, 1 << 20]
    assert parse_lengths("300, 0.5k,300") == [300, 512]
    assert parse_depths("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_choices("full,comet", ev.SYSTEMS, "system") == ["full", "comet"]
    for bad in ("4x", "", "-1k", "inf", "1e400k", "nan"):
        with pytest.raises(ValueError):
            parse_lengths(bad)
    with pytest.raises(ValueError):
        parse_depths("1.5")
    with pytest.raises(ValueError):
        parse_choices("comet,rag", ev.SYSTEMS, "system")
    assert [fmt_tokens(n) for n in (4096, 1 << 20, 300)] == ["4k", "1M", "300"]


def test_full_attention_prefill_and_greedy_decoding(monkeypatch):
    lm, tok = tiny_lm(), tiny_tokenizer()
    ids = list(range(3, 40))
    with torch.no_grad():
        ref = lm(input_ids=torch.tensor([ids])).logits[0, -5:].float()
        monkeypatch.setattr(ev, "PREFILL", 7)  # chunked prefill through the KV cache = one forward
        logits, cache = ev.prefill(lm, ids, keep=5)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert cache.get_seq_length() == len(ids)

    context, question = "Call me Ishmael. " * 20, "What is the pass key?"
    window, n_new = 64, 16

    def reference(turn: list[int]) -> str:  # the same left-truncated ids, greedy without a cache, no run of
        seq = (tok.encode(context, add_special_tokens=False) + turn)[-(window - n_new):]  # 4 tokens twice
        out = []
        with torch.no_grad():
            for _ in range(n_new):
                logits = lm(input_ids=torch.tensor([seq + out])).logits[0, -1, :len(tok)]
                logits[repeat_bans(out, 4)] = float("-inf")
                t = int(logits.argmax())
                if t == tok.convert_tokens_to_ids("<|im_end|>"):
                    break
                out.append(t)
        return tok.decode(out, skip_special_tokens=True)

    got = ev.answer_full_attention(lm, tok, context, question, window, n_new)
    assert got == reference(question_ids(tok, question))
    assert got != ev.answer_full_attention(lm, tok, context, question, window, n_new, no_repeat_ngram=0)  # it loops
    bare = ev.answer_full_attention(lm, tok, context, question, window, n_new, system_turn=False)
    assert bare == reference(followup_ids(tok, question)) and "system" not in tok.decode(followup_ids(tok, question))


def test_answers_on_the_same_samples_and_truncation():
    tok = tiny_tokenizer()
    cells = ev.make_cells("passkey", tok, [200, 400], [0.0, 1.0], 2, seed=3)
    again = ev.make_cells("passkey", tok, [400], [1.0], 2, seed=3)  # a cell does not depend on the others
    assert [s.context for s in again[(400, 1.0)]] == [s.context for s in cells[(400, 1.0)]]
    assert cells[(400, 1.0)][0].context != cells[(400, 1.0)][1].context
    full = engine(tiny_lm(), tok)
    full.lm.config.max_position_embeddings = 300  # a small window: the 400-token inputs are truncated
    rows = ev.run_answers("full", full, "passkey", cells, max_new_tokens=3)
    assert [(r["length"], r["truncated"]) for r in rows[::2]] == [(200, False), (200, False), (400, True), (400, True)]
    assert all(r["acc"] in (0.0, 1.0) and r["answers"] == [r["answers"][0]] for r in rows)


def test_train_split_cells_are_drawn_apart_and_leave_the_eval_cells_as_they_were():
    tok = tiny_tokenizer()
    evals = ev.make_cells("passkey", tok, [300], [0.5], 3, seed=1)
    train = ev.make_cells("passkey", tok, [300], [0.5], 3, seed=1, split="train")
    rng = random.Random("passkey:1:300:0.5")  # the eval cells' seeding, as it was before there was a split
    assert [s.context for s in evals[(300, 0.5)]] == \
        [make_sample("passkey", tok, 300, rng, "eval", 0.5).context for _ in range(3)]
    assert not {s.question for s in train[(300, 0.5)]} & {s.question for s in evals[(300, 0.5)]}
    with pytest.raises(ValueError, match="split 'train' is not available for lm"):
        ev.make_cells("lm", tok, [300], None, 1, split="train")
    with pytest.raises(ValueError, match="split 'test'"):
        ev.make_cells("passkey", tok, [300], [0.5], 1, split="test")


def test_lm_perplexity_variants():
    tok = tiny_tokenizer()
    lm = tiny_lm()
    comet = engine(lm, tok, CometModel.create(lm, CFG))
    full = engine(tiny_lm(), tok)
    cells = ev.make_cells("lm", tok, [200], None, 2, seed=0, chunk_size=CFG.chunk_size)
    assert list(cells) == [(200, None)] and len(cells[(200, None)]) == 2
    rows = ev.run_lm("comet", comet, cells, CFG.chunk_size) + ev.run_lm("full", full, cells, CFG.chunk_size)
    assert sorted({r["system"] for r in rows}) == ["comet", "comet-nomem", "full"]
    for r in rows:
        assert r["k"] == 3 and r["scored"] == CFG.chunk_size - 1 and math.isfinite(r["ppl"]) and r["ppl"] > 1
    assert not any(r.get("truncated") for r in rows)
    summary = ev.summarize(rows)
    assert {(s["system"], s["n"]) for s in summary} == {("comet", 2), ("comet-nomem", 2), ("full", 2)}

    # full attention scores exactly the tokens of chunk k+1 (all but its first) given everything before
    ids = ev.lm_ids(tok, cells[(200, None)][0])
    c, k = CFG.chunk_size, 3
    with torch.no_grad():
        logits = full.lm(input_ids=torch.tensor([ids[:(k + 1) * c - 1]])).logits[0].float()
    ref = F.cross_entropy(logits[k * c:], torch.tensor(ids[k * c + 1:(k + 1) * c]), reduction="sum")
    nll, n = ev.nll_full_attention(full.lm, ids, k * c + 1, (k + 1) * c, window=2048)
    assert n == c - 1 and nll == pytest.approx(float(ref), rel=1e-4)
    nll_t, _ = ev.nll_full_attention(full.lm, ids, k * c + 1, (k + 1) * c, window=c + 8)  # truncated: no crash
    assert math.isfinite(nll_t) and nll_t != pytest.approx(nll)
    # with no chunk before it, memory changes nothing
    assert ev.nll_with_memory(comet.model, ids, 0) == ev.nll_with_memory(comet.model, ids, 0, memory=False)


def test_heldout_accuracy_answers_through_the_engine():
    tok, lm = tiny_tokenizer(), tiny_lm()
    e = engine(lm, tok, CometModel.create(lm, CFG, seed=1))
    acc, rows = ev.heldout_accuracy(e, "passkey", 150, 2, max_new_tokens=3)
    assert ev.heldout_accuracy(e, "passkey", 150, 2, max_new_tokens=3) == (acc, rows)  # the same samples
    assert len(rows) == 2 and acc == sum(r["acc"] for r in rows) / 2
    s = make_sample("passkey", tok, 150, random.Random("heldout:passkey:0:150"), "eval")
    assert rows[0]["answer"] == s.answer  # the first sample, asked the way the CLI asks
    assert rows[0]["prediction"] == e.answer(e.read(s.context), s.question, max_new_tokens=3)


def test_plotting_without_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    rows = [{"task": "passkey", "precision": "4bit", "system": "comet", "length": 4096, "depth": 0.0, "acc": 1.0}]
    with pytest.raises(CometError) as e:
        plot.heatmap(ev.summarize(rows), tmp_path / "h.png")
    assert str(e.value) == "plotting needs matplotlib: pip install 'comet-reader[plot]'"
    assert not (tmp_path / "h.png").exists()


def test_summary_targets_and_heatmap(tmp_path):
    rows = []
    for system, hit in (("comet", 1.0), ("full", 0.0)):
        for n in (4096, 16384):
            for d in (0.0, 1.0):
                acc = 1.0 if (system == "comet" or d == 1.0) else hit
                rows.append({"task": "passkey", "precision": "4bit", "system": system, "length": n, "depth": d,
                             "sample": 0, "acc": acc})
    summary = ev.summarize(rows)
    assert len(summary) == 2 * 2 * (2 + 1)  # systems x lengths x (depths + "all")
    full_all = next(s for s in summary if (s["system"], s["length"], s["depth"]) == ("full", 4096, "all"))
    assert full_all["acc"] == 0.5 and full_all["n"] == 2
    targets = ev.check_targets(summary)
    assert [(t["length"], t["pass"]) for t in targets] == [(4096, True), (16384, True)]
    png = tmp_path / "h.png"
    plot.heatmap(summary, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    qa = [{"task": "needle_qa", "precision": "bf16", "system": s, "length": 4096, "depth": 0.5, "sample": i,
           "em": em, "f1": f1, **({"truncated": False} if s == "full" else {})}
          for s, scores in (("comet", [(1.0, 1.0), (0.0, 0.5)]), ("full", [(1.0, 1.0), (1.0, 1.0)]))
          for i, (em, f1) in enumerate(scores)]
    summary = ev.summarize(qa)
    comet = next(s for s in summary if s["system"] == "comet" and s["depth"] == "all")
    assert (comet["em"], comet["f1"]) == (0.5, 0.75)
    (t,) = ev.check_targets(summary)
    assert t["gap"] == pytest.approx(-0.25) and not t["pass"]

    # facts: at least full attention's accuracy inside its window, 20 points above it beyond
    facts = [{"task": "fact", "precision": "bf16", "system": s, "length": n, "depth": 0.5, "sample": i, "acc": a,
              **({"truncated": n > 8192} if s == "full" else {})}
             for n, accs in ((4096, {"comet": [1.0, 0.0], "full": [1.0, 0.0]}),
                             (16384, {"comet": [1.0, 0.0], "full": [0.0, 0.0]}))
             for s, scores in accs.items() for i, a in enumerate(scores)]
    targets = {t["length"]: t for t in ev.check_targets(ev.summarize(facts))}
    assert targets[4096]["rule"] == "acc >= full" and targets[4096]["pass"]
    assert targets[16384]["rule"] == "acc >= full + 20" and targets[16384]["gap"] == 0.5 and targets[16384]["pass"]


def run_cli(args: list[str]):
    result = CliRunner().invoke(eval_group, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_passkey_json_and_heatmap(env, tmp_path):
    png = tmp_path / "passkey.png"
    result = run_cli(["passkey", "--model", str(env / "model"), "--adapter", str(env / "adapter.safetensors"),
                      "--precision", "fp32", "--lengths", "200,400", "--depths", "0,1", "--systems", "comet,full",
                      "--max-new-tokens", "3", "--json", "--out", str(png)])
    out = json.loads(result.stdout)
    assert out["task"] == "passkey" and out["split"] == "eval" and out["window"] == 2048
    assert len(out["rows"]) == 2 * 2 * 2
    assert {(r["system"], r["length"], r["depth"]) for r in out["summary"]} == {
        (s, n, d) for s in ("comet", "full") for n in (200, 400) for d in (0.0, 1.0, "all")}
    assert all(0 <= r["acc"] <= 1 for r in out["summary"])
    # both systems answered the same samples
    by = {(r["system"], r["length"], r["depth"]): r["answers"] for r in out["rows"]}
    assert all(by[("comet", n, d)] == by[("full", n, d)] for n in (200, 400) for d in (0.0, 1.0))
    assert [t["length"] for t in out["targets"]] == [200, 400]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "estimated" in result.stderr


def test_cli_needle_qa_and_lm(env):
    common = ["--model", str(env / "model"), "--adapter", str(env / "adapter.safetensors"), "--precision", "fp32"]
    out = json.loads(run_cli(["needle-qa", *common, "--lengths", "400", "--depths", "0.5", "--samples", "2",
                              "--max-new-tokens", "3", "--json", "-q"]).stdout)
    assert {r["system"] for r in out["rows"]} == {"comet", "untrained", "full"}
    for s in out["summary"]:
        rs = [r for r in out["rows"] if r["system"] == s["system"]]
        assert s["f1"] == pytest.approx(sum(squad_f1(r["prediction"], r["answers"]) for r in rs) / len(rs))
    assert len(out["targets"]) == 1 and out["targets"][0]["rule"] == "F1 >= full - 5"

    result = run_cli(["lm", *common, "--lengths", "200", "--samples", "1", "-q"])  # tables, not JSON
    text = result.stdout
    assert "perplexity" in text and all(s in text for s in ("comet", "comet-nomem", "untrained", "full"))

    result = run_cli(["passkey", *common, "--lengths", "200", "--depths", "0.5", "--systems", "comet",
                      "--max-new-tokens", "2", "-q"])
    assert "passkey accuracy" in result.stdout and "target passkey fp32 200" in result.stdout


def test_cli_incident_scores_the_cause_named_against_full_attention(env):
    common = ["--model", str(env / "model"), "--adapter", str(env / "adapter.safetensors"), "--precision", "fp32"]
    out = json.loads(run_cli(["incident", *common, "--lengths", "700", "--depths", "0,1", "--samples", "2",
                              "--systems", "comet,full", "--max-new-tokens", "3", "--json", "-q"]).stdout)
    assert out["task"] == "incident" and len(out["rows"]) == 8
    for r in out["rows"]:
        said = f" {normalize_answer(r['prediction'])} "
        assert r["acc"] == float(any(f" {normalize_answer(k)} " in said for k in r["answers"]))
    assert [t["rule"] for t in out["targets"]] == ["acc >= full"]
    text = run_cli(["incident", *common, "--lengths", "700", "--depths", "0.5", "--systems", "comet",
                    "--max-new-tokens", "2", "-q"]).stdout
    assert "incident accuracy" in text
    r = CliRunner().invoke(cli, ["eval", "incident", *common, "--lengths", "40", "--systems", "comet", "-q"])
    assert r.exit_code == 2 and "--lengths: n_tokens=40 is too small" in r.stderr, r.stderr
    train = json.loads(run_cli(["incident", *common, "--lengths", "300", "--depths", "0.5", "--systems", "comet",
                                "--max-new-tokens", "2", "--split", "train", "--json", "-q"]).stdout)
    assert train["split"] == "train" and train["targets"] == [] and len(train["rows"]) == 4
    assert out["split"] == "eval"


def test_cli_summary_scores_f1_against_the_teacher(env):
    common = ["--model", str(env / "model"), "--adapter", str(env / "adapter.safetensors"), "--precision", "fp32"]
    with pytest.raises(DataMissingError, match="make_summaries.py"):  # before any model loads
        ev.check_data("summary")
    spec = importlib.util.spec_from_file_location("make_summaries", "scripts/make_summaries.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    first_two = lambda context, question: " ".join(re.findall(r"[^.!?]+[.!?]", context)[:2])  # noqa: E731
    script.write_split("eval", tiny_tokenizer(), first_two, [300], 3, {"model": "lead-2"}, log=lambda s: None)
    out = json.loads(run_cli(["summary", *common, "--lengths", "300", "--samples", "2", "-n", "8", "--json",
                              "-q"]).stdout)
    assert {r["system"] for r in out["rows"]} == {"comet", "untrained", "full"} and out["max_new_tokens"] == 8
    for s in out["summary"]:
        rs = [r for r in out["rows"] if r["system"] == s["system"]]
        assert s["depth"] is None and len(rs) == 2
        assert s["f1"] == pytest.approx(sum(squad_f1(r["prediction"], r["answers"]) for r in rs) / len(rs))
    text = run_cli(["summary", *common, "--lengths", "300", "--samples", "1", "--systems", "full", "-q"]).stdout
    assert "summary F1" in text and "full" in text
    with pytest.raises(DataMissingError, match="it has 3 of 300 tokens"):
        run_cli(["summary", *common, "--lengths", "200", "--systems", "full", "-q"])


def test_lengths_too_large_for_a_number_are_a_usage_error():
    for bad in ("inf", "1e400k"):
        r = CliRunner().invoke(cli, ["eval", "lm", "--lengths", bad])
        assert r.exit_code == 2 and r.stderr.startswith(f"comet: error: bad length '{bad}'"), r.stderr


def test_cli_usage_errors(env):
    runner = CliRunner()
    r = runner.invoke(eval_group, ["passkey", "--model", str(env / "model")])
    assert r.exit_code == 2 and "--adapter" in r.output
    r = runner.invoke(eval_group, ["passkey", "--model", str(env / "model"), "--adapter",
                                   str(env / "adapter.safetensors"), "--lengths", "4q"])
    assert r.exit_code == 2 and "bad length" in r.output
    r = runner.invoke(eval_group, ["lm", "--adapter", str(env / "adapter.safetensors"), "--precision", "2bit"])
    assert r.exit_code == 2 and "precision" in r.output


def test_cli_checks_plotting_and_data_before_loading(env, tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load", no_load)
    args = ["eval", "passkey", "--model", str(env / "model"), "--adapter", str(env / "adapter.safetensors"),
            "--precision", "fp32", "--lengths", "200"]
    runner = CliRunner()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)
        r = runner.invoke(cli, [*args, "--out", str(tmp_path / "p.png")])
    assert r.exit_code == 1
    assert r.stderr == "comet: error: plotting needs matplotlib: pip install 'comet-reader[plot]'\n"
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "nothing"))
    r = runner.invoke(cli, args)
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("comet: error: ") and "python scripts/fetch_data.py" in r.stderr
    assert "scripts/fetch_data.py" in runner.invoke(cli, ["eval", "--help"]).output


def test_cli_errors_are_comet_errors_and_lm_generates_nothing(env, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not an adapter")
    runner = CliRunner()
    r = runner.invoke(eval_group, ["lm", "--adapter", str(bad), "--lengths", "200"])
    assert isinstance(r.exception, CometError) and "not a valid comet adapter" in str(r.exception)
    r = runner.invoke(cli, ["eval", "lm", "--adapter", str(bad), "--lengths", "200"])
    assert r.exit_code == 1 and r.stderr.startswith("comet: error: ") and len(r.stderr.splitlines()) == 1
    r = runner.invoke(eval_group, ["lm", "--adapter", str(env / "adapter.safetensors"), "-n", "3"])
    assert r.exit_code == 2 and "No such option" in r.output
