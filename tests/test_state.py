"""Memory-state files: exact resume, atomic writes, and refusal of every kind of bad file."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine import CFG, chunks_of, make, states_equal
from tiny import tiny_tokenizer

from comet_core.adapter import AdapterError, load_adapter, save_adapter
from comet_core.config import CometConfig
from comet_core.memory import MemoryState
from comet_core.reader import Reader
from comet_core.state_io import StateError, load_state, read_meta, save_state, state_to_bytes


def meta_for(m, precision="fp32"):
    return {"model": "tiny", "fingerprint": "f" * 16 + m.adapter_hash(), "precision": precision,
            "settings": m.cfg.settings()}


def expect_for(m, precision="fp32"):
    return dict(meta_for(m, precision), dtype=str(m.dtype).removeprefix("torch."), n_layers=m.n_layers, d=m.d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_after_chunk_k_then_continue_is_bit_identical(tmp_path, dtype):
    m = make(dtype=dtype)
    chunks = chunks_of(7)
    q = chunks_of(1, 9, seed=4)[0]
    with torch.no_grad():
        full, _ = m.read(MemoryState.empty(m.n_layers), chunks)
        part, _ = m.read(MemoryState.empty(m.n_layers), chunks[:3])
        part.pending_ids, part.pending_text = [7, 8, 9], "tail text é"
        part.sources = [{"name": "a.txt", "offset": 123}]
        n = save_state(tmp_path / "s.comet", part, meta_for(m))
        loaded, meta = load_state(tmp_path / "s.comet", expect_for(m))
        assert n == (tmp_path / "s.comet").stat().st_size
        assert loaded.pending_ids == [7, 8, 9] and loaded.pending_text == "tail text é"
        assert loaded.sources == [{"name": "a.txt", "offset": 123}]
        assert states_equal(loaded, part)
        resumed, _ = m.read(loaded, chunks[3:])
        assert states_equal(resumed, full)
        assert torch.equal(m.logits(m.live(resumed, q)), m.logits(m.live(full, q)))


def test_reader_resume_through_file_equals_uninterrupted(tmp_path):
    m, tok = make(), tiny_tokenizer()
    text = "The pass key is 12345. Remember it. Some years ago, never mind how long precisely. " * 30
    r = Reader(m, tok)
    r.feed(text)
    r.finish()
    half = len(text) // 2
    r1 = Reader(m, tok)
    r1.feed(text[:half])
    save_state(tmp_path / "s.comet", r1.state, meta_for(m))
    st, _ = load_state(tmp_path / "s.comet", expect_for(m))
    r2 = Reader(m, tok, st)
    r2.feed(text[half:])
    r2.finish()
    assert states_equal(r.state, r2.state) and r.state.pending_ids == r2.state.pending_ids


def test_empty_state_roundtrip(tmp_path):
    m = make()
    save_state(tmp_path / "e.comet", MemoryState.empty(m.n_layers), meta_for(m))
    st, meta = load_state(tmp_path / "e.comet", expect_for(m))
    assert st.chunks == 0 and st.global_state == [None] * m.n_layers and meta["tokens"] == 0


def test_state_size_formula(tmp_path):
    m = make()
    with torch.no_grad():
        st, _ = m.read(MemoryState.empty(m.n_layers), chunks_of(5))
    L, G, T, d = m.n_layers, CFG.n_global, CFG.budget, m.d
    assert st.nbytes() == L * (G + T) * d * 4
    size = save_state(tmp_path / "s.comet", st, meta_for(m))
    assert st.nbytes() < size < st.nbytes() + 4096


@pytest.fixture
def saved(tmp_path):
    m = make()
    with torch.no_grad():
        st, _ = m.read(MemoryState.empty(m.n_layers), chunks_of(3))
    p = tmp_path / "s.comet"
    save_state(p, st, meta_for(m))
    return m, p


def test_truncated_state_is_refused(saved):
    m, p = saved
    data = p.read_bytes()
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(StateError, match="truncated|corrupt|not a comet"):
            load_state(p, expect_for(m))


def test_corrupt_state_is_refused(saved):
    m, p = saved
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF  # flip a byte in the tensor data
    p.write_bytes(bytes(data))
    with pytest.raises(StateError, match="checksum"):
        load_state(p, expect_for(m))
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(StateError, match="corrupt|not a comet"):
        load_state(p, expect_for(m))


def test_foreign_model_state_is_refused(saved):
    m, p = saved
    other = make(seed=1)  # another (differently initialised) adapter
    with pytest.raises(StateError, match="another model or adapter"):
        load_state(p, expect_for(other))
    cfg2 = CometConfig(chunk_size=CFG.chunk_size, stride=CFG.stride, n_global=CFG.n_global, budget=20)
    with pytest.raises(StateError, match="other memory settings.*budget 10 vs 20"):
        load_state(p, dict(expect_for(m), settings=cfg2.settings()))
    with pytest.raises(StateError, match="bfloat16"):
        load_state(p, dict(expect_for(m), dtype="bfloat16", precision="bf16"))


def test_newer_version_and_non_state_files_are_refused(saved, tmp_path):
    m, p = saved
    st, _ = load_state(p, expect_for(m))
    data = state_to_bytes(st, meta_for(m))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    info = json.loads(header["__metadata__"]["comet"])
    info["version"] = 99
    header["__metadata__"]["comet"] = json.dumps(info)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    p.write_bytes(len(h).to_bytes(8, "little") + h + data[8 + n:])
    with pytest.raises(StateError, match="newer"):
        load_state(p, expect_for(m))
    (tmp_path / "x.txt").write_text("hello world, not a state")
    with pytest.raises(StateError):
        read_meta(tmp_path / "x.txt")
    with pytest.raises(StateError, match="no such"):
        read_meta(tmp_path / "missing.comet")
    with pytest.raises(StateError, match="directory"):
        read_meta(tmp_path)


def test_save_is_atomic_and_unwritable_destination_errors(saved, tmp_path):
    m, p = saved
    before = p.read_bytes()
    st, _ = load_state(p, expect_for(m))
    with pytest.raises(StateError, match="cannot write"):
        save_state(tmp_path / "no" / "such" / "dir.comet", st, meta_for(m))
    save_state(p, st, meta_for(m))
    assert p.read_bytes() == before  # identical content, written through a temp file + rename
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_adapter_roundtrip_and_base_check(tmp_path):
    cfg = CometConfig(chunk_size=24, stride=4, n_global=4, budget=10, lora_rank=2)
    m = make(cfg=cfg, seed=3)
    with torch.no_grad():
        for p in m.mem.trainable().values():
            p.add_(torch.randn_like(p) * 0.01)
    save_adapter(tmp_path / "a.safetensors", m, "base-fp", "tiny")
    from tiny import tiny_lm
    m2, meta = load_adapter(tmp_path / "a.safetensors", tiny_lm(), "base-fp")
    assert m2.cfg == cfg and m2.adapter_hash() == m.adapter_hash() and meta["base_model"] == "tiny"
    ids = chunks_of(1, 9)[0]
    with torch.no_grad():
        assert torch.equal(m.logits(m.live(MemoryState.empty(2), ids)), m2.logits(m2.live(MemoryState.empty(2), ids)))
    with pytest.raises(AdapterError, match="trained for tiny"):
        load_adapter(tmp_path / "a.safetensors", tiny_lm(), "other-fp")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError):
        load_adapter(tmp_path / "bad.safetensors", tiny_lm())


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    from comet_core.state_io import atomic_write
    atomic_write(tmp_path / "f.bin", b"abc")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
