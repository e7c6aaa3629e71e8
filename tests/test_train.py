"""Training: gradients reach every adapter part through the memory, checkpoints resume, the loss drops."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_data import _make_data
from tiny import save_tiny, tiny_lm, tiny_tokenizer

from comet_core.adapter import AdapterError, load_adapter, read_adapter, save_adapter
from comet_core.config import CometConfig
from comet_core.loading import ModelError
from comet_core.model import CometModel
from comet_core.prompt import question_ids
from comet_core.tasks import Sample
from comet_core.train.trainer import Curriculum, Encoded, TrainArgs, encode, out_of_time, sample_loss, train


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    _make_data(root / "data")
    save_tiny(root / "model")
    return root


def passkey_sample(key: str, n_words: int = 120) -> Sample:
    filler = " ".join(["the pass key is hidden somewhere in this long text"] * (n_words // 10))
    return Sample(context=f"The pass key is {key}. Remember it. " + filler, question="What is the pass key?",
                  answer=key, task="passkey")


def test_encode_puts_full_chunks_in_memory_and_the_rest_live():
    tok = tiny_tokenizer()
    cfg = CometConfig(chunk_size=32, stride=4, n_global=4, budget=8, priming=32)  # the tail stays live
    s = passkey_sample("12345")
    enc = encode(s, tok, cfg, random.Random(0))
    ctx = tok.encode(s.context, add_special_tokens=False)
    assert [len(c) for c in enc.chunks] == [32] * (len(ctx) // 32)
    answer = tok.encode("12345", add_special_tokens=False)
    assert enc.live[-enc.n_target:] == answer + [tok.convert_tokens_to_ids("<|im_end|>")]  # trains the stop
    assert enc.live[:len(ctx) % 32] == ctx[len(ctx) // 32 * 32:]
    enc_r = encode(s, tok, cfg, random.Random(0), random_plan=1.0)
    assert all(8 <= len(c) <= 32 for c in enc_r.chunks) and sum(map(len, enc_r.chunks)) > len(ctx) - 8


def test_encode_with_priming_zero_reads_the_tail_and_leaves_the_question_alone_live():
    tok = tiny_tokenizer()
    cfg = CometConfig(chunk_size=32, stride=4, n_global=4, budget=8)  # priming 0: the default
    s = passkey_sample("12345")
    ctx = tok.encode(s.context, add_special_tokens=False)
    assert len(ctx) % 32
    enc = encode(s, tok, cfg, random.Random(0))
    assert [len(c) for c in enc.chunks] == [32] * (len(ctx) // 32) + [len(ctx) % 32]
    assert sum(enc.chunks, []) == ctx
    assert enc.live == question_ids(tok, s.question) + enc.live[-enc.n_target:]
    enc5 = encode(s, tok, cfg, random.Random(0), priming=5)  # 5 tokens of the tail stay live
    assert sum(enc5.chunks, []) == ctx[:-5] and enc5.live[:5] == ctx[-5:]
    cut = encode(s, tok, cfg, random.Random(0), n_ctx=40)  # a common plan for a batch: the first 40 tokens
    assert [len(c) for c in cut.chunks] == [32, 8] and sum(cut.chunks, []) == ctx[:40]


def test_gradients_reach_every_adapter_part_through_memory():
    tok = tiny_tokenizer()
    m = CometModel.create(tiny_lm(), CometConfig(chunk_size=32, stride=4, n_global=4, budget=8, lora_rank=2,
                                                 lora_targets=("q_proj", "v_proj", "down_proj")))
    params = m.mem.trainable()
    assert "lora.1_down_proj.B" in params
    for p in params.values():
        p.requires_grad_(True)
    enc = encode(passkey_sample("12345"), tok, m.cfg, random.Random(0))
    assert len(enc.chunks) >= 3
    loss, _ = sample_loss(m, enc, grad_ckpt=True)
    loss.backward()
    for name, p in params.items():
        if name.endswith(".A"):
            continue  # LoRA B starts at zero, so A gets no gradient on the first step; B does
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # global-beacon embeddings appear only in context chunks: their gradient flows through memory alone
    assert params["special"].grad[1:].abs().sum() > 0
    g_ckpt = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    loss2, _ = sample_loss(m, enc, grad_ckpt=False)
    loss2.backward()
    assert torch.allclose(loss, loss2)
    for k, g in g_ckpt.items():
        torch.testing.assert_close(params[k].grad, g, atol=1e-5, rtol=1e-4)


def test_end_weight_weighs_the_last_answer_token_and_the_end_of_turn():
    from comet_core.train.trainer import batch_loss

    enc = Encoded([], list(range(10)), n_target=3, earlier=((2, 4),))
    assert enc.targets() == [2, 3, 7, 8, 9]
    assert enc.weights() == [1.0] * 5 and enc.weights(4.0) == [1.0, 1.0, 1.0, 4.0, 4.0]
    assert Encoded([], [1, 2], n_target=1).weights(3.0) == [3.0]  # a one-token target: that token
    tok = tiny_tokenizer()
    m = CometModel.create(tiny_lm(), CometConfig(chunk_size=32, stride=4, n_global=4, budget=8, lora_rank=2))
    encs = [encode(passkey_sample(k), tok, m.cfg, random.Random(0), n_ctx=70) for k in ("12345", "678")]
    with torch.no_grad():
        plain, _ = batch_loss(m, encs, grad_ckpt=False)
        w2, _ = batch_loss(m, encs, grad_ckpt=False, end_weight=2.0)
        w5, _ = batch_loss(m, encs, grad_ckpt=False, end_weight=5.0)
    end = w2 - plain  # the two end targets' cross-entropy, per sample
    assert (end > 0).all() and (end < plain).all()  # some targets, not all of them
    torch.testing.assert_close(w5, plain + 4 * end)


def test_grad_chunks_truncates_backprop_to_the_last_chunks():
    from comet_core.train.trainer import batch_loss

    tok = tiny_tokenizer()
    m = CometModel.create(tiny_lm(), CometConfig(chunk_size=32, stride=4, n_global=4, budget=8, lora_rank=2))
    params = m.mem.trainable()
    with torch.no_grad():
        for k, p in params.items():
            if k.endswith(".B"):
                p.normal_(std=0.5)
    for p in params.values():
        p.requires_grad_(True)
    encs = [encode(passkey_sample(k), tok, m.cfg, random.Random(0), n_ctx=100) for k in ("12345", "67890")]
    n = len(encs[0].chunks)
    assert n >= 3

    def grads(grad_chunks: int):
        for p in params.values():
            p.grad = None
        loss, _ = batch_loss(m, encs, grad_ckpt=False, grad_chunks=grad_chunks)
        loss.sum().backward()
        return loss.detach(), {k: p.grad.clone() for k, p in params.items() if p.grad is not None}

    loss_all, g_all = grads(0)
    loss_n, g_n = grads(n)  # as many as there are: the full backprop
    loss_1, g_1 = grads(1)  # only the last context chunk (and the live one)
    torch.testing.assert_close(loss_1, loss_all)  # the same forward
    torch.testing.assert_close(loss_n, loss_all)
    assert g_n.keys() == g_all.keys()
    for k in g_all:
        torch.testing.assert_close(g_n[k], g_all[k])
    # the memory nets still learn from the last chunk, but earlier chunks add nothing to their gradient
    mem = [k for k in g_all if not k.startswith("lora")]
    assert mem and all(g_1[k].isfinite().all() for k in g_1)
    assert any(g_1[k].abs().sum() > 0 for k in mem)
    assert any(not torch.allclose(g_1[k], g_all[k]) for k in mem)


def test_init_adapter_can_add_lora_targets(tmp_path):
    tok = tiny_tokenizer()
    m = CometModel.create(tiny_lm(), CometConfig(chunk_size=32, stride=4, n_global=4, budget=8, lora_rank=2))
    with torch.no_grad():
        for k, p in m.mem.trainable().items():
            if k.endswith(".B"):
                p.normal_(std=0.5)
    save_adapter(tmp_path / "a.safetensors", m, "fp", "tiny")
    enc = encode(passkey_sample("12345"), tok, m.cfg, random.Random(0))
    with torch.no_grad():
        want, _ = sample_loss(m, enc, grad_ckpt=False)
        big, _ = load_adapter(tmp_path / "a.safetensors", tiny_lm(), "fp",
                              add_lora_targets=("q_proj", "gate_proj", "o_proj"))
        assert big.cfg.lora_targets == ("q_proj", "v_proj", "gate_proj", "o_proj")
        assert {"lora.0_gate_proj.B", "lora.1_o_proj.A", "lora.1_v_proj.B"} <= set(big.mem.trainable())
        got, _ = sample_loss(big, enc, grad_ckpt=False)  # new targets start at zero: the same model
    torch.testing.assert_close(got, want)
    same, _ = load_adapter(tmp_path / "a.safetensors", tiny_lm(), "fp", add_lora_targets=("q_proj", "v_proj"))
    assert same.cfg == m.cfg
    with pytest.raises(AdapterError, match="fingerprint"):
        load_adapter(tmp_path / "a.safetensors", tiny_lm(), "other", add_lora_targets=("gate_proj",))


def test_curriculum_promotes_and_keeps_levels():
    cur = Curriculum(level=2, max_level=8, promote_at=0.75, window=4)
    assert not any(cur.record(2, ok) for ok in (True, False, True))
    assert cur.record(2, True) and cur.level == 4
    assert not cur.record(2, True)  # results at other levels do not count
    for _ in range(4):
        cur.record(4, True)
    assert cur.level == 8
    for _ in range(8):
        cur.record(8, True)
    assert cur.level == 8


def test_curriculum_counts_only_key_retrieval_tasks():
    # lm continuations and SQuAD answers are almost never exact: counted, they would cap the rate below
    # promote_at and the curriculum could never advance
    cur = Curriculum(level=2, max_level=8, promote_at=0.75, window=4, tasks=("passkey", "multi_needle"))
    for _ in range(10):
        assert not cur.record(2, False, "lm") and not cur.record(2, False, "needle_qa")
    assert not cur.recent
    assert not any(cur.record(2, True, t) for t in ("passkey", "multi_needle", "passkey"))
    assert cur.record(2, True, "passkey") and cur.level == 4


def test_curriculum_patience_promotes_after_n_steps():
    cur = Curriculum(level=2, max_level=4, promote_at=0.75, window=4, patience=3)
    assert not cur.end_step() and not cur.end_step()
    assert cur.end_step() and cur.level == 4 and cur.steps_at_level == 0
    assert not any(cur.end_step() for _ in range(5)) and cur.level == 4  # the top level stays
    assert not Curriculum(level=2, max_level=4, promote_at=0.75, window=4).end_step()  # 0 = never


def test_time_limit_starts_no_step_that_would_end_past_it():
    """A run with --time-limit 10 (minutes) whose longest step took 85 s starts no step after 8:35 (not 10:00)."""
    assert not out_of_time(500.0, 85.0, 10)
    assert out_of_time(516.0, 85.0, 10) and out_of_time(601.0, 0.0, 10)
    assert not out_of_time(10 ** 6, 85.0, None)  # no limit


def test_train_saves_and_resumes(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    args = TrainArgs(out=str(env / "run"), model=str(env / "model"), precision="fp32", chunk_size=256,
                     n_global=4, budget=16, lora_rank=2, steps=2, accum=2, save_every=1, warmup=1)
    rec = train(args)
    assert rec["step"] == 2 and rec["loss"] == rec["loss"]  # finite (not NaN)
    meta, tensors = read_adapter(env / "run" / "adapter.safetensors")
    assert meta["notes"]["trained_steps"] == 2 and "special" in tensors
    args.steps, args.resume = 3, True
    rec = train(args)
    assert rec["step"] == 3
    log = [json.loads(x) for x in (env / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_train_runs_on_the_device_it_is_given(env, monkeypatch):
    """--device picks where a run trains; a checkpoint resumes on it (its Adam moments move there). A GPU
    that is not there is a one-line error before anything is written."""
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    gpu = torch.cuda.is_available()
    args = TrainArgs(out=str(env / "run_dev"), model=str(env / "model"), precision="fp32", chunk_size=256,
                     n_global=4, budget=16, lora_rank=2, steps=1, accum=1, save_every=1, warmup=1, eval_every=0,
                     device="cuda" if gpu else "cpu")
    assert train(args)["step"] == 1
    args.steps, args.resume = 2, True
    assert train(args)["step"] == 2
    if not gpu:
        args = TrainArgs(out=str(env / "run_no_gpu"), model=str(env / "model"), device="cuda")
        with pytest.raises(ModelError, match="CUDA is not available"):
            train(args)
        assert not (env / "run_no_gpu").exists()


def test_workers_draw_the_batches_and_a_run_is_reproducible(env, monkeypatch):
    """--workers: batches come from worker processes, seeded by the training process, so two runs with the
    same settings draw the same samples, at the levels the curriculum chose."""
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    logs = []
    for name in ("workers_a", "workers_b"):
        args = TrainArgs(out=str(env / name), model=str(env / "model"), precision="fp32", chunk_size=256,
                         n_global=4, budget=16, lora_rank=2, steps=3, accum=2, warmup=1, eval_every=0,
                         workers=2, max_chunks=2, level_patience=1, short_share=0.0,
                         tasks="passkey:1,fact:1,recall:1")
        assert train(args)["step"] == 3
        logs.append([json.loads(x) for x in (env / name / "log.jsonl").read_text().splitlines()])
    a, b = logs
    assert [r["step"] for r in a] == [1, 2, 3]
    assert sum(len(v) for v in a[0]["tasks"].values()) == 2  # accum samples per step
    assert [(r["drawn"], r["tasks"]) for r in a] == [(r["drawn"], r["tasks"]) for r in b]
    assert {r["drawn"] for r in a} <= {1, 2}


def test_resuming_with_a_lower_max_chunks_goes_back_to_that_level(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    args = TrainArgs(out=str(env / "run_down"), model=str(env / "model"), precision="fp32", chunk_size=256,
                     n_global=4, budget=16, lora_rank=2, steps=3, accum=1, save_every=1, warmup=1,
                     eval_every=0, level_patience=1, max_chunks=4, short_share=0.0)
    assert train(args)["level"] == 4  # promoted after each step: 1 -> 2 -> 4
    args.steps, args.resume, args.max_chunks = 4, True, 2
    rec = train(args)
    assert rec["step"] == 4 and rec["level"] == 2
    log = [json.loads(x) for x in (env / "run_down" / "log.jsonl").read_text().splitlines()]
    assert [r["drawn"] for r in log] == [1, 2, 4, 2]  # the chunks each step's samples read (no shorter draws)


def test_resuming_with_more_lora_targets_adds_them_and_keeps_the_rest(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    args = TrainArgs(out=str(env / "run_more"), model=str(env / "model"), precision="fp32", chunk_size=256,
                     n_global=4, budget=16, lora_rank=2, steps=1, accum=1, save_every=1, warmup=1, eval_every=0)
    train(args)
    meta, before = read_adapter(env / "run_more" / "adapter.safetensors")
    assert meta["config"]["lora_targets"] == ["q_proj", "v_proj"]
    args.steps, args.resume = 2, True
    train(args)  # no --lora-targets: the adapter's own, nothing added
    meta, _ = read_adapter(env / "run_more" / "adapter.safetensors")
    assert meta["config"]["lora_targets"] == ["q_proj", "v_proj"]
    args.steps, args.lora_targets = 3, "q_proj,up_proj"
    assert train(args)["step"] == 3
    meta, after = read_adapter(env / "run_more" / "adapter.safetensors")
    assert meta["config"]["lora_targets"] == ["q_proj", "v_proj", "up_proj"]
    assert {k for k in after if "up_proj" in k} and set(before) < set(after)
    assert any(after[k].abs().sum() > 0 for k in after if k.endswith("up_proj.B"))  # trained from zero


def test_ctrl_c_keeps_every_completed_step(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    args = TrainArgs(out=str(env / "run_int"), model=str(env / "model"), precision="fp32", chunk_size=256,
                     n_global=4, budget=16, lora_rank=2, steps=20, accum=1, save_every=10, warmup=1)

    def interrupt(record: dict) -> None:
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(args, on_step=interrupt)
    meta, _ = read_adapter(env / "run_int" / "adapter.safetensors")
    assert meta["notes"]["trained_steps"] == 3  # saved at the interrupt, not only every 10 steps
    args.steps, args.resume = 4, True
    assert train(args)["step"] == 4


def test_sigterm_stops_comet_train_like_ctrl_c(env, monkeypatch):
    """`kill` (or timeout, a service manager) on `comet train`: the completed steps are saved, exit 130, and
    the run resumes; a background `comet train &` ignores SIGINT, so SIGTERM is how such a run is stopped."""
    import os
    import signal

    from click.testing import CliRunner

    import comet_core.train.trainer as trainer
    from comet_cli.main import cli

    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    real = trainer.train

    def kill_at_step_2(args, on_step=None):
        def hook(record: dict) -> None:
            on_step(record)
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(args, hook)

    monkeypatch.setattr(trainer, "train", kill_at_step_2)
    out = env / "run_term"
    flags = ["--model", str(env / "model"), "--precision", "fp32", "--chunk-size", "256", "--n-global", "4",
             "--budget", "16", "--lora-rank", "2", "--steps", "10", "--accum", "1", "--save-every", "10",
             "--eval-every", "0", "--threads", str(torch.get_num_threads()), "-q"]
    before = signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(cli, ["train", "--out", str(out), *flags])
    assert r.exit_code == 130 and "every completed step is saved" in r.stderr, r.stderr
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only there while training
    meta, _ = read_adapter(out / "adapter.safetensors")
    assert meta["notes"]["trained_steps"] == 2  # saved at the signal, not at the 10-step checkpoint
    monkeypatch.setattr(trainer, "train", real)
    r = CliRunner().invoke(cli, ["train", "--out", str(out), *flags, "--resume", "--steps", "3", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] == 3, r.stderr


def test_resume_at_the_target_step_trains_nothing_and_says_so(env, monkeypatch):
    from click.testing import CliRunner

    from comet_cli.main import cli

    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    out = env / "run_done"
    opts = dict(model=str(env / "model"), precision="fp32", chunk_size=256, n_global=4, budget=16, lora_rank=2,
                steps=1, accum=1, eval_every=0)  # each a `comet train` option
    seen = train(TrainArgs(out=str(out), **opts))["seen_tokens"]
    adapter = (out / "adapter.safetensors").read_bytes()
    rec = train(TrainArgs(out=str(out), resume=True, **opts))
    assert (rec["step"], rec["seen_tokens"], rec["level"]) == (1, seen, 1) and "loss" not in rec
    flags = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = CliRunner().invoke(cli, ["train", "--out", str(out), *flags, "--resume", "--json",
                                 "--threads", str(torch.get_num_threads())])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == "comet: nothing to do: already at step 1 (raise --steps to train further)\n"
    got = json.loads(r.stdout)
    assert got["step"] == 1 and got["seen_tokens"] == seen and got["adapter"] == str(out / "adapter.safetensors")
    assert (out / "adapter.safetensors").read_bytes() == adapter  # nothing rewritten
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


def _raw_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k[:-4]: v for k, v in load_file(run / "train_state.safetensors").items() if k.endswith(".raw")}


def test_ema_adapter_holds_the_average_and_a_resumed_run_matches_an_uninterrupted_one(env, monkeypatch):
    monkeypatch.setenv("COMET_DATA", str(env / "data"))

    def run(name: str, steps: int, resume: bool = False) -> dict:
        args = TrainArgs(out=str(env / name), model=str(env / "model"), precision="fp32", chunk_size=256,
                         n_global=4, budget=16, lora_rank=2, steps=steps, accum=1, save_every=1, warmup=1,
                         ema=0.75, resume=resume)
        return train(args)

    run("ema1", 1)
    _, avg = read_adapter(env / "ema1" / "adapter.safetensors")
    raw = _raw_weights(env / "ema1")
    b = [k for k in raw if k.startswith("lora.") and k.endswith(".B")]
    assert b and any(raw[k].abs().sum() > 0 for k in b)
    for k in b:  # LoRA B starts at zero, so after one step the average is (1 - decay) x the weights
        torch.testing.assert_close(avg[k], 0.25 * raw[k])
    run("ema3", 3)
    run("ema_r", 2)
    run("ema_r", 3, resume=True)
    _, want = read_adapter(env / "ema3" / "adapter.safetensors")
    _, got = read_adapter(env / "ema_r" / "adapter.safetensors")
    for k in raw:
        torch.testing.assert_close(got[k], want[k])
    for k, v in _raw_weights(env / "ema3").items():
        torch.testing.assert_close(_raw_weights(env / "ema_r")[k], v)


def test_lm_sample_with_context_filling_whole_chunks_still_has_a_token_to_predict_from():
    tok = tiny_tokenizer()
    cfg = CometConfig(chunk_size=32, stride=4, n_global=4, budget=8)
    words = "call me ishmael some years ago never mind how long precisely".split()
    text, i = "", 0
    while not (text and len(tok.encode(text, add_special_tokens=False)) % 32 == 0):
        text += ("" if not text else " ") + words[i % len(words)]
        i += 1
    enc = encode(Sample(context=text, question="", answer="the watery part", task="lm"), tok, cfg,
                 random.Random(0))
    assert len(enc.live) > enc.n_target and enc.chunks[-1] and len(enc.chunks[-1]) == 31



def test_a_multi_question_sample_trains_every_answer_and_each_as_if_asked_alone():
    tok = tiny_tokenizer()
    m = CometModel.create(tiny_lm(), CometConfig(chunk_size=32, stride=4, n_global=4, budget=8))
    s = passkey_sample("12345")
    s.turns = [("What is the second key?", "777"), ("And the third?", "4242")]
    enc = encode(s, tok, m.cfg, random.Random(0))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert [enc.live[i] for i in enc.targets()] == (tok.encode("12345") + [eot] + tok.encode("777") + [eot]
                                                     + tok.encode("4242") + [eot])
    assert enc.n_predicted == len(enc.targets()) and len(enc.earlier) == 2
    with torch.no_grad():
        whole, _ = sample_loss(m, enc, grad_ckpt=False)
        parts = [sample_loss(m, Encoded(enc.chunks, enc.live[:b], b - a), grad_ckpt=False)[0]
                 for a, b in [*enc.earlier, (len(enc.live) - enc.n_target, len(enc.live))]]
    torch.testing.assert_close(whole, sum(parts))  # causal: a later turn never changes an earlier answer


def test_training_on_a_4bit_backbone_moves_every_trained_tensor(env, monkeypatch):
    """The default training precision is reading's 4bit: every LoRA factor, memory net and special embedding
    must get a gradient through the quantised linears (bitsandbytes' CPU fast path silently drops them)."""
    monkeypatch.setenv("COMET_DATA", str(env / "data"))
    args = TrainArgs(out=str(env / "run_4bit"), model=str(env / "model"), chunk_size=256, n_global=4,
                     budget=16, lora_rank=2, steps=1, accum=2, save_every=1, warmup=1, eval_every=0,
                     min_chunks=2, max_chunks=2)  # two chunks read: the global gate is used too
    assert args.precision == "4bit"
    train(args)
    _, before = read_adapter(env / "run_4bit" / "adapter.safetensors")
    args.steps, args.resume = 3, True
    assert train(args)["step"] == 3
    _, after = read_adapter(env / "run_4bit" / "adapter.safetensors")
    still = [k for k in before if torch.equal(before[k], after[k])]
    assert not still, f"not trained at 4bit: {still[:5]}"
