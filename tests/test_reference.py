"""Importing a checkpoint in the reference implementation's layout (written here, tiny Qwen3)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_config, tiny_tokenizer
from transformers import AutoModelForCausalLM

from comet_core.adapter import load_adapter
from comet_core.generate import generate
from comet_core.memory import MemoryState
from comet_core.reference import ReferenceError, import_reference

G = 4


def write_reference_checkpoint(path, sharded: bool):
    tok = tiny_tokenizer()
    base_len = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|memory|>"]})
    tok.add_tokens([f"<beacon_{i}>" for i in range(G)] + ["<beacon>"])
    ids = tok.convert_tokens_to_ids(["<|memory|>"] + [f"<beacon_{i}>" for i in range(G)] + ["<beacon>"])
    assert ids == list(range(base_len, base_len + G + 2))
    cfg = tiny_config("qwen3", vocab=512)  # resized with pad_to_multiple_of=256
    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    sd = {}
    for k, v in lm.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied: not saved
        sd[(k.replace(".self_attn.", ".inner_layer.self_attn.").replace(".mlp.", ".inner_layer.mlp.")
            .replace(".input_layernorm.", ".inner_layer.input_layernorm.")
            .replace(".post_attention_layernorm.", ".inner_layer.post_attention_layernorm."))] = v.clone()
    d = cfg.hidden_size
    g = torch.Generator().manual_seed(2)
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        sd[p + "global_memory_net.norm.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        sd[p + "global_memory_net.g_proj.weight"] = torch.randn(1, 2 * d, generator=g) * 0.02
        sd[p + "global_memory_net.o_proj.down_proj.weight"] = torch.randn(8, d, generator=g) * 0.02
        sd[p + "global_memory_net.o_proj.up_proj.weight"] = torch.randn(d, 8, generator=g) * 0.02
        sd[p + "temp_memory_net.0.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        sd[p + "temp_memory_net.1.down_proj.weight"] = torch.randn(8, d, generator=g) * 0.02
        sd[p + "temp_memory_net.1.up_proj.weight"] = torch.randn(d, 8, generator=g) * 0.02
    path.mkdir()
    if sharded:
        keys = sorted(sd)
        half = len(keys) // 2
        shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
        for f, ks in shards.items():
            save_file({k: sd[k] for k in ks}, str(path / f))
        index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(sd, str(path / "model.safetensors"))
    raw = cfg.to_dict()
    raw.update(architectures=["MemQwen3ForCausalLM"], chunk_size=16, temp_beacon_stride=4, temp_mem_budget=12,
               global_beacon_ids=ids[1:1 + G], placeholder_id=ids[0], temp_beacon_id=ids[-1])
    (path / "config.json").write_text(json.dumps(raw))
    tok.save_pretrained(path)
    return sd, ids


@pytest.mark.parametrize("sharded", [False, True])
def test_import_reference_checkpoint(tmp_path, sharded):
    sd, ids = write_reference_checkpoint(tmp_path / "ref", sharded)
    out, adapter = import_reference(tmp_path / "ref", tmp_path / "out")
    lm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32)
    model, meta = load_adapter(adapter, lm)
    assert (model.cfg.chunk_size, model.cfg.stride, model.cfg.n_global, model.cfg.budget) == (16, 4, G, 12)
    q = sd["model.layers.1.inner_layer.self_attn.q_proj.weight"]
    assert torch.equal(lm.model.layers[1].self_attn.q_proj.weight, q)
    emb = sd["model.embed_tokens.weight"]
    assert torch.equal(model.mem.special[0], emb[ids[-1]])  # temp beacon
    assert torch.equal(model.mem.special[1:], emb[ids[1:1 + G]])  # global beacons in order
    net = model.mem.global_nets[1]
    assert torch.equal(net.g_proj.weight, sd["model.layers.1.global_memory_net.g_proj.weight"])
    assert torch.equal(net.o_proj.up.weight, sd["model.layers.1.global_memory_net.o_proj.up_proj.weight"])
    assert torch.equal(model.mem.temp_nets[0].norm.weight, sd["model.layers.0.temp_memory_net.0.weight"])
    down = sd["model.layers.0.temp_memory_net.1.down_proj.weight"]
    assert torch.equal(model.mem.temp_nets[0].o_proj.down.weight, down)
    # the imported tokenizer has no memory tokens: "<beacon>" is plain text again
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert all(i < 384 for i in tok.encode("x <beacon> <beacon_0> <|memory|>", add_special_tokens=False))
    with torch.no_grad():
        st, _ = model.read(MemoryState.empty(model.n_layers), [torch.randint(3, 384, (1, 16)) for _ in range(3)])
        out_ids = list(generate(model, st, tok.encode("hello there"), max_new_tokens=6, n_vocab=len(tok)))
    assert len(out_ids) <= 6 and all(i < len(tok) for i in out_ids)


def test_import_rejects_plain_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ReferenceError, match="not a reference"):
        import_reference(tmp_path / "m", tmp_path / "out")
