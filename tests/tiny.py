"""Tiny randomly initialised llama / qwen2 / qwen3 models and a tiny byte-level BPE tokenizer, built
locally (nothing is downloaded), for fast tests of the real code paths."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

from comet_core.config import FAMILIES  # noqa: F401 (the tests parametrize over it)

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ("Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my "
          "purse, and nothing particular to interest me on shore, I thought I would sail about a little and "
          "see the watery part of the world. The pass key is 12345. Remember it. 0123456789 <beacon> \n\t"
          "ERROR WARN INFO service restarted at 2026-11-25 12:00:00; nightly job failed: disk full. ")


def tiny_config(family: str, vocab: int = 384, layers: int = 2):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=2)
    if family == "llama":
        return LlamaConfig(head_dim=16, **common)
    if family == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if family == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    raise ValueError(family)


def tiny_lm(family: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(tiny_config(family, layers=layers), attn_implementation="sdpa",
                                          dtype=dtype)
    return lm.eval()


def tiny_tokenizer(vocab: int = 384) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(path: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny model folder (config, weights, tokenizer) as a user would pass with --model."""
    tiny_lm(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
