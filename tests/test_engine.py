"""The CoMeT engine on tiny random llama / qwen2 / qwen3 models (CPU, fp32 unless stated)."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_lm, tiny_tokenizer

from comet_core.config import CometConfig
from comet_core.generate import generate, repeat_bans
from comet_core.layout import plan_layouts, render
from comet_core.memory import GlobalMemoryNet, MemoryState, push_fifo
from comet_core.model import CometModel
from comet_core.reader import Reader, safe_cut

CFG = CometConfig(chunk_size=24, stride=4, n_global=4, budget=10)


def make(family="llama", cfg=CFG, dtype=torch.float32, seed=0) -> CometModel:
    return CometModel.create(tiny_lm(family, dtype=dtype), cfg, seed=seed)


def chunks_of(n_chunks: int, c: int = 24, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 384, (1, c), generator=g) for _ in range(n_chunks)]


def test_layout_reproduces_spec_worked_example():
    # spec 1.3: G=2, s=2, budget 3, text lengths [3,4,4]
    lays = plan_layouts([3, 4, 4], chunks_done=0, beacons=0, stride=2, n_global=2, budget=3)
    text = [[100, 101, 102], [103, 104, 105, 106], [107, 108, 109, 110]]
    assert render(lays[0], text[0]) == [100, 101, "B", 102, "B", "g0", "g1"]
    assert render(lays[1], text[1]) == ["P"] * 4 + [103, 104, "B", 105, 106, "B", "g0", "g1"]
    assert render(lays[2], text[2]) == ["P"] * 5 + [107, 108, "B", 109, 110, "B", "g0", "g1"]
    l1 = lays[1]
    assert (l1.n_gmem, l1.n_tmem) == (2, 2)
    assert l1.full_idx(l1.tbeacon_idx).tolist() == [6, 9]
    assert l1.full_idx(l1.gbeacon_idx).tolist() == [10, 11]
    assert (lays[2].n_gmem, lays[2].n_tmem) == (2, 3)  # the queue is full at 3
    # static length S_i = c + ceil(c/s) + 2G + T_i
    assert [x.length for x in lays] == [3 + 2 + 2, 4 + 2 + 4 + 2, 4 + 2 + 4 + 3]


def test_live_layout_beacons_after_full_segments_only():
    m = make()
    st = MemoryState.empty(m.n_layers)
    lay = m.live_layout(st, 9)  # stride 4: beacons after tokens 4 and 8, none after the 9th, no globals
    assert render(lay, list(range(9))) == [0, 1, 2, 3, "B", 4, 5, 6, 7, "B", 8]


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_off_matches_base_model(family):
    m = make(family, CometConfig(chunk_size=24, stride=1000, n_global=4, budget=10, sink=False))
    ids = chunks_of(1, 30)[0]
    with torch.no_grad():
        ours = m.logits(m.live(MemoryState.empty(m.n_layers), ids))
        base = m.lm(ids).logits.float()
    torch.testing.assert_close(ours, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_is_a_real_first_token(family):
    m = make(family, CometConfig(chunk_size=24, stride=1000, n_global=4, budget=10, sink=True))
    ids = chunks_of(1, 30)[0]
    with torch.no_grad():
        ours = m.logits(m.live(MemoryState.empty(m.n_layers), ids))
        base = m.lm(torch.cat([torch.tensor([[m.sink_id]]), ids], dim=1)).logits.float()[:, 1:]
    torch.testing.assert_close(ours, base, atol=1e-5, rtol=1e-5)


def test_memory_off_matches_base_model_bf16():
    cfg = CometConfig(chunk_size=24, stride=1000, n_global=4, budget=10, sink=False)
    m = make("llama", cfg, dtype=torch.bfloat16)
    ids = chunks_of(1, 30)[0]
    with torch.no_grad():
        ours = m.logits(m.live(MemoryState.empty(m.n_layers), ids))
        base = m.lm(ids).logits.float()
    torch.testing.assert_close(ours, base, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_only_prefix_equals_the_stock_layer(family):
    """Spec 1.6 [opt]: slots that only give keys/values leave the body rows' outputs unchanged."""
    from comet_core.prefix import layer_with_prefix

    m = make(family)
    g = torch.Generator().manual_seed(3)
    prefix, body = torch.randn(1, 9, m.d, generator=g), torch.randn(1, 20, m.d, generator=g)
    x = torch.cat([prefix, body], dim=1)
    cos, sin = m.rope(29)
    with torch.no_grad():
        for layer in m.layers:
            stock = layer(x, attention_mask=None, position_embeddings=(cos, sin))
            stock = (stock[0] if isinstance(stock, tuple) else stock)[:, 9:]
            torch.testing.assert_close(layer_with_prefix(layer, x, 9, cos, sin), stock, atol=1e-5, rtol=1e-5)


def states_equal(a: MemoryState, b: MemoryState) -> bool:
    same = all(torch.equal(x, y) for x, y in zip(a.global_state + a.temp, b.global_state + b.temp, strict=True))
    return same and (a.chunks, a.tokens, a.beacons) == (b.chunks, b.tokens, b.beacons)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_major_equals_layer_major(family):
    m = make(family)
    chunks = chunks_of(6)
    with torch.no_grad():
        st = MemoryState.empty(m.n_layers)
        hid_a = []
        for c in chunks:
            st, h = m.read(st, [c], return_hidden=True)
            hid_a += h
        st_b, hid_b = m.read(MemoryState.empty(m.n_layers), chunks, return_hidden=True)
        st_c, _ = m.read(MemoryState.empty(m.n_layers), chunks[:2])
        st_c, _ = m.read(st_c, chunks[2:])
    assert states_equal(st, st_b) and states_equal(st, st_c)
    for a, b in zip(hid_a, hid_b, strict=True):
        assert torch.equal(a, b)
    assert st.n_temp == CFG.budget and st.chunks == 6 and st.tokens == 6 * 24


def test_memory_changes_what_the_model_sees():
    m = make()
    q = chunks_of(1, 10, seed=9)[0]
    with torch.no_grad():
        s1, _ = m.read(MemoryState.empty(m.n_layers), chunks_of(2, seed=1))
        s2, _ = m.read(MemoryState.empty(m.n_layers), chunks_of(2, seed=2))
        l1, l2 = m.logits(m.live(s1, q)), m.logits(m.live(s2, q))
    assert not torch.allclose(l1, l2)


def test_fifo_keeps_newest_entries():
    q = None
    for i in range(5):
        q = push_fifo(q, torch.full((1, 3, 2), float(i)), budget=7)
    assert q.shape == (1, 7, 2)
    assert q[0, :, 0].tolist() == [2, 3, 3, 3, 4, 4, 4]  # the oldest (0, 1 and one 2) were evicted
    assert push_fifo(None, torch.ones(1, 3, 2), budget=0) is None


def test_gate_stays_in_open_interval():
    torch.manual_seed(0)
    net = GlobalMemoryNet(64, 8)
    torch.nn.init.normal_(net.g_proj.weight, std=0.05)
    cur, prev = net.norm(torch.randn(2, 4, 64) * 50), net.norm(torch.randn(2, 4, 64) * 50)
    g = net.gate(cur, prev)
    assert g.shape == (2, 4, 1) and (g > 0).all() and (g < 1).all()
    new = net(torch.randn(2, 4, 64), prev)
    assert torch.isfinite(new).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_recomputing_live_chunk(family):
    m = make(family)
    tok = tiny_tokenizer()
    with torch.no_grad():
        st, _ = m.read(MemoryState.empty(m.n_layers), chunks_of(3))
        prompt = chunks_of(1, 11, seed=5)[0][0].tolist()
        out = list(generate(m, st, prompt, max_new_tokens=14, no_repeat_ngram=0))
        assert len(out) == 14
        full = torch.tensor([prompt + out])
        logits = m.logits(m.live(st, full))[0]  # [p + n, V], no cache, beacons by the live rule
    greedy = logits[len(prompt) - 1:-1].argmax(-1).tolist()
    assert greedy == out
    assert all(t < len(tok) for t in out)


def test_generation_stops_on_stop_token_and_samples_reproducibly():
    m = make()
    st = MemoryState.empty(m.n_layers)
    prompt = [5, 6, 7]
    greedy = list(generate(m, st, prompt, max_new_tokens=5))
    assert len(greedy) == 5 and list(generate(m, st, prompt, max_new_tokens=5, stop_ids=[greedy[0]])) == []
    a = list(generate(m, st, prompt, max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3))
    b = list(generate(m, st, prompt, max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3))
    assert a == b and len(a) == 20 and len(set(a)) > 1
    k = next(k for k in range(1, 20) if a[k] not in a[:k])  # a token not generated before
    assert list(generate(m, st, prompt, max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3,
                         stop_ids=[a[k]])) == a[:k]


def test_repeat_bans_name_the_tokens_that_would_repeat_a_run():
    assert repeat_bans([1, 2, 3, 4, 1, 2, 3], 4) == [4]
    assert sorted(repeat_bans([1, 2, 9, 1, 2, 8, 1, 2], 3)) == [8, 9]
    assert repeat_bans([1, 2, 1, 2], 2) == [1]
    assert repeat_bans([5, 5, 5], 1) == [5, 5, 5]
    assert repeat_bans([1, 2, 3], 4) == [] and repeat_bans([1, 2, 1, 2], 0) == []


def test_no_repeat_ngram_breaks_a_loop_and_changes_nothing_before_it():
    m = make()
    st = MemoryState.empty(m.n_layers)

    def first_repeat(out: list[int], n: int) -> int | None:  # index of the token that repeats a run of n
        return next((k for k in range(n - 1, len(out)) if out[k] in repeat_bans(out[:k], n)), None)

    free = list(generate(m, st, [5, 6, 7], max_new_tokens=40, no_repeat_ngram=0))
    k = first_repeat(free, 4)
    assert k is not None  # greedy decoding of a random model loops: the case the option exists for
    guarded = list(generate(m, st, [5, 6, 7], max_new_tokens=40, no_repeat_ngram=4))
    assert len(guarded) == 40 and first_repeat(guarded, 4) is None
    assert guarded[:k] == free[:k] and guarded[k] != free[k]


def test_beacon_string_is_plain_text():
    tok = tiny_tokenizer()
    m = make()
    ids = tok.encode("see <beacon> and <beacon_0> here", add_special_tokens=False)
    assert all(i < m.lm.config.vocab_size for i in ids)
    assert len(tok) == m.lm.config.vocab_size  # CoMeT adds nothing to the vocabulary
    # the layout only depends on the token count: "<beacon>" text is just text tokens
    lay = m.layouts(MemoryState.empty(m.n_layers), [len(ids)])[0]
    assert lay.n_tbeacons == -(-len(ids) // CFG.stride) and len(lay.text_idx) == len(ids)


def test_safe_cut_and_incremental_tokenization_are_split_invariant():
    tok = tiny_tokenizer()
    text = ("Call me Ishmael.  Some years ago -- never mind how long\n\nprecisely 12345 <beacon> ok. " * 40)
    assert safe_cut("ab cd", 10) == 2 and safe_cut("ab  cd", 10) == 0 and safe_cut("abcd", 10) == 0
    m = make()
    whole = tok.encode(text, add_special_tokens=False)
    g = torch.Generator().manual_seed(0)
    r = Reader(m, tok)
    i = 0
    while i < len(text):
        n = int(torch.randint(1, 200, (1,), generator=g))
        r.feed(text[i:i + n])
        i += n
    r.finish()
    c = CFG.chunk_size
    assert r.state.tokens == (len(whole) // c) * c
    assert r.state.pending_ids == whole[r.state.tokens:]
    r2 = Reader(m, tok, block=3)
    r2.feed(text)
    r2.finish()
    assert states_equal(r.state, r2.state) and r.state.pending_ids == r2.state.pending_ids


def test_dense_weights_fold_lora_once_per_visit():
    from comet_core.dense import MIN_ROWS, dense_weights

    m = make("qwen2", CometConfig(chunk_size=24, stride=4, n_global=4, budget=10, lora_rank=4))
    layer = m.layers[0]
    lora = layer.self_attn.q_proj  # qwen2: q_proj has a bias, kept by the folded weight
    with torch.no_grad():
        lora.B.normal_()
        x = torch.randn(1, MIN_ROWS, m.d)
        ref = lora(x)
        with dense_weights(layer, torch.float32):
            got, few = lora(x), lora(x[:, :3])
        assert "forward" not in vars(lora) and "forward" not in vars(lora.base)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(few, ref[:, :3])


def test_sink_states_are_cached_until_a_weight_changes():
    m = make("llama", CometConfig(chunk_size=24, stride=4, n_global=4, budget=10, sink=True, lora_rank=4))
    m.sink_id = 5  # the tiny model's EOS is its padding token, whose embedding is zero
    with torch.no_grad():
        a = m.sink_states()
        assert m.sink_states() is a  # reused
        m.mem.lora["0_v_proj"].B.add_(0.5)  # what an optimizer step or a loaded adapter does
        b = m.sink_states()
    assert b is not a and torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    fresh = m.sink_states()  # autograd on: computed, never cached
    assert fresh is not b and m.sink_states() is not fresh


def test_compiled_layer_visit_equals_eager(monkeypatch):
    """fused.py (COMET_COMPILE=1) computes what prefix.py does: the same states and hidden states, chunk
    sizes varying (growing queue, a short last chunk) through one dynamic-shape graph."""
    from comet_core import fused

    calls = []
    compiled = fused.compiled
    monkeypatch.setattr(fused, "compiled", lambda: calls.append(1) or compiled())
    m = make("qwen3", CometConfig(chunk_size=24, stride=4, n_global=4, budget=10, lora_rank=4))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.mem.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    chunks = [torch.randint(3, 384, (1, n), generator=g) for n in (24, 24, 24, 17)]
    out = {}
    for on in (False, True):
        m.compile = on
        with torch.no_grad():
            out[on] = m.read(MemoryState.empty(m.n_layers), chunks, return_hidden=True)
    (a, ha), (b, hb) = out[False], out[True]
    for x, y in zip(a.global_state + a.temp + ha, b.global_state + b.temp + hb, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    assert len(calls) == m.n_layers * len(chunks)  # every prefix layer visit went through the compiled graph
