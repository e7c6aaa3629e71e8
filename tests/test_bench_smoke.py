"""Every benchmark script runs end to end on a tiny model at tiny sizes (its timings mean nothing).

Most scripts run their per-configuration children in this process (COMET_BENCH_IN_PROCESS=1); the
scaling test goes through real child processes once, as the full runs do.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tiny import save_tiny

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench import (  # noqa: E402
    attention,
    common,
    experiments,
    gates,
    generation,
    grad_flow,
    heldout,
    hw_limit,
    llamacpp,
    memory_gain,
    memory_probe,
    needle_leaks,
    order_probe,
    priming_ab,
    profile_read,
    scaling,
    tradeoff,
    train_speed,
    vs_full_attention,
)

TEXT = str(REPO / "samples" / "macbeth-act1.txt")
BASE = ["--adapter", "none", "--threads", "1", "--text", TEXT]
MEMORY = ["--chunk-size", "32", "--stride", "8", "--n-global", "2", "--budget", "8", *BASE]


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setenv("COMET_CACHE", str(root / "cache"))
    threads = torch.get_num_threads()
    yield save_tiny(root / "tiny"), root, mp
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture
def in_process(tiny_env, monkeypatch):
    monkeypatch.setenv("COMET_BENCH_IN_PROCESS", "1")
    return tiny_env


def test_scaling_runs_children_and_writes_table_json_plot(tiny_env, capsys):
    model, root, _ = tiny_env
    out = root / "scaling.json"
    res = scaling.main(["--model", str(model), "--precisions", "bf16", "--lengths", "64", "--dense-chunks", "1",
                        "--json-out", str(out), *MEMORY])
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 1000
    runs = json.loads(out.read_text())["runs"]
    assert [r["target"] for r in runs] == [64]
    assert all(r["tokens"] >= r["target"] and r["tok_s"] > 0 and r["read_peak_rss_mb"] > 0 for r in runs)
    assert runs[0]["state_bytes"] > 0 and res["dense"]["bf16"]["tok_s"] > 0
    assert "Criteria" in capsys.readouterr().out


def test_vs_full_attention_marks_the_window(in_process):
    model, root, _ = in_process
    res = vs_full_attention.main(["--model", str(model), "--precisions", "bf16", "--lengths", "128,256,4k",
                                  "--comet-extra", "", "--json-out", str(root / "vs.json"), *MEMORY])
    assert res["window"] == 2048
    assert [r["tokens"] for r in res["full"]] == [128, 256]  # 4k is past the tiny model's window
    assert res["full"][0]["kv_bytes"] > 0
    assert [r["target"] for r in res["comet"]["bf16"]] == [128, 256, 4096]
    assert (root / "vs.png").is_file()


def test_hw_limit_counts_flops_and_compares_with_peak(in_process):
    model, root, _ = in_process
    res = hw_limit.main(["--model", str(model), "--precisions", "4bit,bf16", "--tokens", "64", "--sizes", "64",
                         "--dense-chunks", "1", "--min-seconds", "0.01", "--json-out", str(root / "hw.json"), *MEMORY])
    lay = res["reading"][0]["layout"]
    assert lay["S"] == lay["sink"] + 32 + 4 + 2 * 2 + 8 and lay["overhead_S_over_c"] == lay["S"] / 32
    # tiny llama: d 64, 4 heads x 16, 2 kv heads, mlp 128 -> q 64x64, k,v 64x32, o 64x64, 3 x 64x128
    assert lay["layer_linear_params"] == 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    # the prefix rows (sink, 2 global + 8 temp slots) only run q, k, v: 64x64 + 2 x 64x32 weights
    n_body, n_pre = 32 + 4 + 2, lay["S"] - (32 + 4 + 2)
    assert lay["prefix_no_mlp"] == n_pre == lay["sink"] + 2 + 8
    lin = 2 * lay["layer_linear_params"] * n_body + 2 * (64 * 64 + 2 * 64 * 32) * n_pre
    assert lay["flops_linear"] == pytest.approx(2 * lin / 32)
    assert all(k["bf16"] > 0 for k in res["kernels"]) and "nf4 bnb kernel" in res["kernels"][0]


def test_generation_times_first_token_and_decode(in_process):
    model, root, _ = in_process
    res = generation.main(["--model", str(model), "--precisions", "bf16", "--tokens", "64", "--new-tokens", "4",
                           "--json-out", str(root / "gen.json"), *MEMORY])
    r = res["runs"][0]
    assert r["warm"]["new_tokens"] == 4 and r["warm"]["ttft_s"] > 0 and r["plain"]["decode_tok_s"] > 0


def test_profile_read_groups_time(in_process):
    model, root, _ = in_process
    res = profile_read.main(["--model", str(model), "--precisions", "bf16", "--chunks", "2",
                             "--json-out", str(root / "prof.json"), *MEMORY])
    cats = res["precisions"]["bf16"]["categories"]
    assert "dense GEMM" in cats and sum(cats.values()) > 0


def test_experiments_variants_agree_with_the_engine(in_process):
    model, root, _ = in_process
    res = experiments.main(["--model", str(model), "--precisions", "4bit", "--tokens", "96", "--rounds", "1",
                            "--variants", "base,block1,no_kv_only,no_sink_cache,none",
                            "--json-out", str(root / "exp.json"), *MEMORY])
    rows = res["precisions"]["4bit"]
    assert rows["base"]["block"] == 4 and rows["block1"]["block"] == 1
    assert rows["block1"]["state_diff"] == 0  # chunk-major and layer-major reading agree exactly
    assert rows["no_kv_only"]["state_diff"] < 1e-2  # same computation, more rows
    assert rows["no_sink_cache"]["state_diff"] == 0
    assert all(r["tok_s"] > 0 for r in rows.values())


def test_tradeoff_sweeps_settings(in_process):
    model, root, _ = in_process
    res = tradeoff.main(["--model", str(model), "--precisions", "bf16", "--tokens", "64", "--configs",
                         "32/8/2/8,64/8/2/8", "--json-out", str(root / "tradeoff.json"), *BASE])
    assert [r["c"] for r in res["runs"]] == [32, 64] and res["runs"][0]["S_over_c"] > res["runs"][1]["S_over_c"]


def test_llamacpp_reports_or_skips(tiny_env):
    _, root, _ = tiny_env
    # --no-extra-bufts: on VMs that list AMX without running it, ggml's AMX matmul dies with SIGILL
    res = llamacpp.main(["--json-out", str(root / "llamacpp.json"), "--lengths", "64", "--reps", "1",
                         "--text", TEXT, "--no-extra-bufts"])
    assert res["status"] == "ok" or "not installed" in res["status"]


def test_attention_times_each_kernel_forward_and_backward(tiny_env):
    _, root, _ = tiny_env
    rows = attention.main(["--shapes", "16x1", "--reps", "1", "--threads", "1", "--json-out", str(root / "att.json")])
    assert [r["kernel"] for r in rows] == ["flash", "matmul fp32 scores", "matmul bf16 scores"]
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)


@pytest.fixture
def tiny_data(tiny_env, tmp_path, monkeypatch):
    """The tiny model and the synthetic data folder the training samples are drawn from."""
    from test_data import _make_data

    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    return tiny_env[0], tmp_path


def test_train_speed_sequential_batched_and_data_parallel(tiny_data):
    model, tmp = tiny_data
    rows = train_speed.main(["--model", str(model), "--chunk-size", "256", "--levels", "1", "--batch", "2",
                             "--steps", "1", "--warmup", "0", "--threads", "1", "--json-out", str(tmp / "ts.json")])
    assert [r["mode"] for r in rows] == ["sequential", "batched", "data-parallel"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    rows = train_speed.main(["--model", str(model), "--chunk-size", "256", "--levels", "1", "--batch", "2",
                             "--steps", "1", "--warmup", "0", "--threads", "1", "--precisions", "4bit",
                             "--modes", "batched", "--grad-chunks", "0,1", "--json-out", str(tmp / "ts4.json")])
    assert [(r["mode"], r["precision"], r["grad_chunks"]) for r in rows] == [("batched", "4bit", 0),
                                                                             ("batched", "4bit", 1)]
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_priming_ab_trains_and_asks_each_layout(tiny_data):
    model, tmp = tiny_data
    rows = priming_ab.main(["--model", str(model), "--chunk-size", "256", "--steps", "1", "--samples", "1",
                            "--threads", "1", "--json-out", str(tmp / "ab.json")])
    assert [r["priming"] for r in rows] == [0, 256] and all(len(r["heldout_acc"]) == 3 for r in rows)


def test_grad_flow_reaches_every_context_chunk(tiny_data):
    model, _ = tiny_data
    r = grad_flow.main(["--model", str(model), "--chunks", "2", "--chunk-size", "64", "--threads", "1"])
    assert len(r["embed_grad_per_token"]) == 3 and all(g > 0 for g in r["embed_grad_per_token"])
    assert len(r["layers"]) == 2 and r["beacon_grad"]["temp"] > 0


def test_gates_records_every_chunk_and_layer(in_process):
    model, root, _ = in_process
    r = gates.main(["--model", str(model), "--chunks", "4", "--json-out", str(root / "gates.json"), *MEMORY])
    assert len(r["per_chunk"]) == 3 and len(r["layers"]) == 2  # no gate at the first chunk
    g, hl = r["overall"]["mean_gate"], r["overall"]["half_life_chunks"]
    assert 0 < g < 1 and 0 < hl <= math.log(0.5) / math.log(g) + 1e-9  # Jensen: mean log g <= log mean g


def test_prose_stream_and_sizes():
    pieces = common.prose_pieces(Path(TEXT), piece_chars=1000)
    a, b = next(pieces), next(pieces)
    assert len(a) == len(b) == 1000 and a != b
    assert common.parse_sizes("4k,1M,300") == [4096, 1 << 20, 300]
    assert common.fmt_size(1 << 20) == "1M" and common.fmt_size(16384) == "16k"


def test_memory_gain_and_probe_run_on_a_tiny_adapter(tiny_env, tmp_path, monkeypatch):
    from test_data import _make_data

    from comet_core.adapter import save_adapter
    from comet_core.config import CometConfig
    from comet_core.loading import load_model, model_fingerprint
    from comet_core.model import CometModel

    model, _, _ = tiny_env
    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    lm = load_model(str(model), "bf16").model
    cfg = CometConfig(chunk_size=64, stride=8, n_global=2, budget=8, lora_rank=2, lora_targets=("q_proj", "up_proj"))
    save_adapter(tmp_path / "a.safetensors", CometModel.create(lm, cfg), model_fingerprint(lm), "tiny")
    adapter = str(tmp_path / "a.safetensors")
    summary = memory_gain.main(["--model", str(model), "--adapters", adapter, "--tasks", "passkey,recall",
                                "--lengths", "256", "--samples", "2", "--out", str(tmp_path / "g.json")])
    assert [(s["task"], s["n"]) for s in summary] == [("passkey", 2), ("recall", 2)]
    assert all(s["memory"] > 0 and s["in_window"] > 0 and s["gain"] == s["no_memory"] - s["memory"] for s in summary)
    # two adapters read the same samples: the paired table; a copy of an adapter differs by exactly 0
    (tmp_path / "b.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes())
    both = f"{adapter},{tmp_path / 'b.safetensors'}"
    memory_gain.main(["--model", str(model), "--adapters", both, "--tasks", "passkey", "--lengths", "256",
                      "--samples", "3", "--no-window", "--out", str(tmp_path / "g2.json")])
    res = json.loads((tmp_path / "g2.json").read_text())
    assert all(s["in_window"] is None for s in res["summary"])
    assert [(d["task"], d["n"], d["diff"], d["se"]) for d in res["paired"]] == [("passkey", 3, 0.0, 0.0)]
    # count and pet questions from the same text in several wordings (value first, value last, ...)
    res = order_probe.main(["--model", str(model), "--adapter", adapter, "--precision", "bf16", "--samples", "2",
                            "--json-out", str(tmp_path / "c.json")])
    assert [r["variant"] for r in res["rows"]] == ["eval", "twice", "train", "no_exactly", "no_opener",
                                                   "city_first"] * 2
    pet = order_probe.main(["--model", str(model), "--adapter", adapter, "--precision", "bf16", "--relation",
                            "pet", "--samples", "1", "--json-out", str(tmp_path / "p.json")])
    assert [r["variant"] for r in pet["rows"]] == ["eval", "owner_first"]
    assert json.loads((tmp_path / "p.json").read_text())["rows"] == pet["rows"]
    assert all(v["of"] == 2 and v["right"] + sum(v["wrong_by_digits"].values()) == 2 for v in res["summary"].values())
    res = heldout.main(["--model", str(model), "--adapters", f"{adapter},{adapter}", "--precisions", "bf16",
                        "--tokens", "256", "--samples", "2", "--json-out", str(tmp_path / "h.json")])
    assert [r["adapter"] for r in res["rows"]] == [adapter, adapter] and res["rows"][0]["samples"] == 2
    assert res["rows"][0]["passkey"] == res["rows"][1]["passkey"] and 0 <= res["rows"][0]["fact"] <= 1  # same samples
    assert json.loads((tmp_path / "h.json").read_text())["rows"] == res["rows"]
    res = memory_probe.main(["--model", str(model), "--adapter", adapter, "--length", "256", "--steps", "2",
                             "--out", str(tmp_path / "p.json")])
    assert res["n_chunks"] == 4 and len(res["layers"]) == 2 and len(res["curve"]) == 2
    assert res["layers"][-1]["temp_rel"] > 0  # the two keys leave different memories


@pytest.mark.parametrize("task", ["passkey", "recall"])
def test_in_memory_keeps_the_needle_out_of_the_live_chunk(tmp_path, monkeypatch, task):
    from test_data import _make_data
    from tiny import tiny_tokenizer

    from comet_core.config import CometConfig

    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    tok, cfg = tiny_tokenizer(), CometConfig(chunk_size=256, n_global=4, budget=16)
    levels = [2, 2, 2, 4, 4] * 6
    c = cfg.chunk_size  # priming c: the pending tail stays live, where a needle could leak
    assert needle_leaks.leaks(1.0, task, levels, tok, cfg, random_plan=0.5, priming=c) == 0
    assert needle_leaks.leaks(0.0, task, levels, tok, cfg, random_plan=0.5, priming=c) > 0  # the check can see them
    assert needle_leaks.leaks(0.0, task, levels, tok, cfg, random_plan=0.5) == 0  # priming 0: nothing stays live


def test_fact_errors_counts_training_values_among_wrong_answers(tmp_path, capsys):
    from bench import fact_errors
    from comet_core.tasks import generators as gen

    held = gen._split_pool(gen._JOBS, "eval")[0]
    train = gen._split_pool(gen._JOBS, "train")
    rows = [{"system": "comet", "answers": str([held]), "prediction": held, "acc": "1.0"},
            {"system": "comet", "answers": str([held]), "prediction": train[0] + ".", "acc": "0.0"},
            {"system": "comet", "answers": str([held]), "prediction": "a doctor", "acc": "0.0"},
            {"system": "comet", "answers": str(["Monday"]), "prediction": "Sunday", "acc": "0.0"},  # shared pool
            {"system": "full", "answers": str([held]), "prediction": train[1], "acc": "0.0"}]
    (tmp_path / "fact-4k.json").write_text(json.dumps({"rows": rows}))
    r = fact_errors.fact_errors(tmp_path)
    assert (r["eval_only_questions"], r["right"], r["wrong"], r["wrong_with_a_training_value"]) == (3, 1, 2, 1)
    assert r["by_kind"] == {"day": [0, 1], "job": [1, 3]}
    fact_errors.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert f"| {tmp_path} | 3 | 1 | 2 | 1 |" in out and "right per relation: day 0/1, job 1/3" in out


def test_passkey_errors_sorts_misses_by_kind(tmp_path, capsys):
    from bench import passkey_errors as pe

    assert pe.miss_kind("90995", "9095") == "dropped a repeated digit"
    assert pe.miss_kind("82908", "8298.") == "dropped a digit"
    assert pe.miss_kind("9700649", "9700694") == "swapped two digits"
    assert pe.miss_kind("58941", "88941") == "changed a digit"
    assert pe.miss_kind("7224773", "72247") == "other" and pe.miss_kind("1234", "I do not know") == "other"
    rows = [{"system": "comet", "answers": str(["90995"]), "prediction": "9095", "acc": "0.0"},
            {"system": "comet", "answers": str(["12345"]), "prediction": "12345", "acc": "1.0"},
            {"system": "full", "answers": str(["90995"]), "prediction": "1", "acc": "0.0"}]
    (tmp_path / "passkey-4k.json").write_text(json.dumps({"rows": rows}))
    r = pe.passkey_errors(tmp_path)
    assert (r["asked"], r["missed"], r["kinds"]["dropped a repeated digit"]) == (2, 1, 1)
    pe.main([str(tmp_path)])
    assert f"| {tmp_path} | 2 | 1 | 1 | 0 | 0 | 0 | 0 |" in capsys.readouterr().out


def test_compare_runs_pairs_the_same_steps_samples(tmp_path):
    from bench import compare_runs

    def log(run: str, recs: list[dict]) -> dict:
        (tmp_path / run).mkdir()
        (tmp_path / run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return compare_runs._read(tmp_path / run / "log.jsonl")

    a = log("a", [{"step": 9, "tasks": {"fact": [[9.0, 0]]}},  # before the fork: not compared
                  {"step": 10, "tasks": {"fact": [[2.0, 0], [1.0, 1]], "passkey": [[0.5, 1]]}},
                  {"step": 11, "tasks": {"fact": [[3.0, 0]]}},
                  {"step": 12, "tasks": {"fact": [[4.0, 0]]}}])
    b = log("b", [{"step": 10, "tasks": {"fact": [[1.0, 1], [1.0, 1]], "passkey": [[0.25, 1]]}},
                  {"step": 11, "tasks": {"fact": [[1.0, 1]]}}])  # step 12 not logged yet: left out
    rows = {r["task"]: r for r in compare_runs.paired([a, b], first=10, window=50)}
    assert rows["fact"]["n"] == 3 and rows["fact"]["loss"] == [2.0, 1.0] and rows["fact"]["exact"] == [0.333, 1.0]
    mean, se = rows["fact"]["diff"][0]  # paired differences -1, 0, -2
    assert mean == -1.0 and se == pytest.approx(0.577, abs=1e-3)
    assert rows["passkey"]["diff"] == [[-0.25, 0.0]]
    levels = log("lv", [{"step": 1, "seen_tokens": 0, "tasks": {"fact": [[1.0, 0]]}},
                        {"step": 2, "seen_tokens": 2 * 1000, "tasks": {"fact": [[1.0, 0], [3.0, 1]]}},  # ~4 x 256
                        {"step": 3, "seen_tokens": 2000 + 250, "drawn": 1, "tasks": {"fact": [[2.0, 0]]}}])
    by = {r["level"]: r for r in compare_runs.paired([levels], first=2, window=50, by_level=256)}
    assert by[4]["loss"] == [2.0] and by[4]["exact"] == [0.5] and by[1]["n"] == 1 and by[1]["diff"] == []
    c = log("c", [{"step": 10, "tasks": {"fact": [[1.0, 1]]}}])  # another draw: nothing to pair
    with pytest.raises(SystemExit, match="different samples"):
        compare_runs.paired([a, c], first=10, window=50)


def _script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_respace_adapter_changes_stride_and_budget_only(tiny_env, tmp_path, monkeypatch):
    from test_data import _make_data

    from comet_core.adapter import read_adapter, save_adapter
    from comet_core.config import CometConfig
    from comet_core.loading import load_model, model_fingerprint
    from comet_core.model import CometModel

    respace = _script("respace_adapter")
    model, _, _ = tiny_env
    lm = load_model(str(model), "bf16").model
    cfg = CometConfig(chunk_size=64, stride=8, n_global=2, budget=8, lora_rank=2)
    src, dst = tmp_path / "a.safetensors", tmp_path / "s4.safetensors"
    save_adapter(src, CometModel.create(lm, cfg), model_fingerprint(lm), "tiny")
    assert respace.main([str(src), str(dst), "stride=4", "budget=16"]) == 0
    (m0, t0), (m1, t1) = read_adapter(src), read_adapter(dst)
    assert m1["config"] == dict(m0["config"], stride=4, budget=16)
    assert m1["base_fingerprint"] == m0["base_fingerprint"] and t1.keys() == t0.keys()
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    assert respace.main([str(src), str(tmp_path / "x.safetensors"), "n_global=4"]) == 2  # a weight shape
    assert respace.main([str(src), str(tmp_path / "x.safetensors"), "stride=0"]) == 2
    assert respace.main([str(tmp_path / "none.safetensors"), str(tmp_path / "x.safetensors"), "stride=4"]) == 1
    assert not (tmp_path / "x.safetensors").exists()
    # the respaced adapter reads: 4 chunks at the new density
    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    res = heldout.main(["--model", str(model), "--adapters", str(dst), "--precisions", "bf16", "--tokens", "256",
                        "--samples", "1", "--json-out", str(tmp_path / "heldout.json")])
    assert res["rows"][0]["samples"] == 1 and 0 <= res["rows"][0]["passkey"] <= 1


def test_blend_adapters_averages_every_tensor_and_refuses_mismatches(tiny_env, tmp_path):
    from comet_core.adapter import load_adapter, read_adapter, save_adapter
    from comet_core.config import CometConfig
    from comet_core.loading import load_model, model_fingerprint
    from comet_core.model import CometModel

    blend = _script("blend_adapters")
    model, _, _ = tiny_env

    def backbone():  # a fresh one for each CometModel (LoRA wraps the backbone's linears in place)
        return load_model(str(model), "bf16").model

    cfg = CometConfig(chunk_size=64, stride=8, n_global=2, budget=8, lora_rank=2)
    fp = model_fingerprint(backbone())
    a, b, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "ab.safetensors"
    save_adapter(a, CometModel.create(backbone(), cfg), fp, "tiny")
    mb = CometModel.create(backbone(), cfg)
    with torch.no_grad():  # B's weights differ from A's everywhere (LoRA B starts at zero in both)
        for p in mb.mem.parameters():
            p.add_(torch.randn_like(p))
    save_adapter(b, mb, fp, "tiny")
    assert blend.main([str(a), str(b), "0.25", str(out)]) == 0
    (_, ta), (_, tb), (meta, tab) = read_adapter(a), read_adapter(b), read_adapter(out)
    assert tab.keys() == ta.keys() and meta["notes"]["blend"]["t"] == 0.25
    assert all(torch.allclose(tab[k], 0.75 * ta[k] + 0.25 * tb[k]) for k in ta)
    assert any(not torch.equal(tab[k], ta[k]) for k in ta)
    load_adapter(out, backbone(), fp)  # the blend loads onto the backbone it was made for
    other = tmp_path / "other.safetensors"
    other_cfg = CometConfig(chunk_size=64, stride=8, n_global=4, budget=8, lora_rank=2)
    save_adapter(other, CometModel.create(backbone(), other_cfg), fp, "tiny")
    bad = tmp_path / "bad.safetensors"
    assert blend.main([str(a), str(other), "0.5", str(bad)]) == 1  # another shape
    assert blend.main([str(a), str(b), "1.5", str(bad)]) == 2
    assert blend.main([str(a), str(tmp_path / "none.safetensors"), "0.5", str(bad)]) == 1
    assert not bad.exists()


def test_passkey_likelihood_scores_the_key_and_the_miss_on_the_measured_sample(tiny_env, tmp_path, monkeypatch):
    from test_data import _make_data

    from bench import passkey_likelihood as pl
    from comet_core.adapter import save_adapter
    from comet_core.config import CometConfig
    from comet_core.evaluate import make_cells
    from comet_core.loading import load_model, model_fingerprint
    from comet_core.model import CometModel

    model, _, _ = tiny_env
    _make_data(tmp_path / "data")
    monkeypatch.setenv("COMET_DATA", str(tmp_path / "data"))
    lm = load_model(str(model), "bf16")
    cfg = CometConfig(chunk_size=64, stride=8, n_global=2, budget=8, lora_rank=2)
    adapter = tmp_path / "a.safetensors"
    save_adapter(adapter, CometModel.create(lm.model, cfg), model_fingerprint(lm.model), "tiny")
    key = make_cells("passkey", lm.tokenizer, [256], [0.5], 2, seed=0)[(256, 0.5)][1].answer
    cell = {"system": "comet", "length": 256, "depth": 0.5}
    rows = [dict(cell, sample=1, answers=[key], prediction=key[:-1], acc=0.0),
            dict(cell, sample=0, answers=["1"], prediction="1", acc=1.0)]
    run = {"adapter": str(adapter), "precisions": ["bf16"], "seed": 0, "rows": rows}
    (tmp_path / "passkey-short.json").write_text(json.dumps(run))
    res = pl.main([str(tmp_path), "--model", str(model), "--json-out", str(tmp_path / "l.json")])
    (row,) = res["rows"]  # the right answer is not scored
    assert (row["key"], row["said"]) == (key, key[:-1]) and row["logp_key"] < 0 and row["logp_said"] < 0
    # where the answers part, the prefix's own forward gives the same probabilities as the whole answer's
    engine = pl.load(str(model), "bf16", adapter)
    s = make_cells("passkey", engine.tok, [256], [0.5], 2, seed=0)[(256, 0.5)][1]
    lp_key, lp_said = pl.answer_logprobs(engine, engine.read(s.context), s.question, [key, key[:-1]])
    assert math.isclose(row["logp_key"], float(lp_key.sum()), rel_tol=1e-4)
    assert math.isclose(row["p_said"], math.exp(lp_said[row["at"]]), rel_tol=1e-3)
    assert math.isclose(row["p_key"], math.exp(lp_key[row["at"]]), rel_tol=1e-3) and row["rank_key"] >= 1
    assert json.loads((tmp_path / "l.json").read_text())["rows"] == res["rows"]
    rows[0]["answers"] = ["0"]  # a folder measured on other samples is refused
    (tmp_path / "passkey-short.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="not the one measured"):
        pl.main([str(tmp_path), "--model", str(model), "--json-out", str(tmp_path / "l.json")])
