"""How a question is put to the model after a document has been read (used by the CLI and the trainer).

The document is read as raw text. The live last chunk is the pending tail of the document, then the
question in the model's chat template with the assistant turn opened (answer.py decides how much of the
tail stays live). An empty question means "continue the document" (language modelling).
"""

from __future__ import annotations

SUMMARY_PROMPT = "Summarize the text above in a few sentences."
NO_REPEAT_NGRAM = 4  # an answer never repeats a run of this many tokens (generate.py; a small model loops without it)


def question_ids(tokenizer, question: str) -> list[int]:
    if not question:
        return []
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in some transformers versions
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer.encode("\n\nQuestion: " + question + "\nAnswer:", add_special_tokens=False)


def followup_ids(tokenizer, question: str) -> list[int]:
    """Token ids that ask one more question after an answer and its end-of-turn token (a multi-turn chat:
    training asks several questions about one text at the cost of one read)."""
    if getattr(tokenizer, "chat_template", None):
        mark = "\u27e6answer\u27e7"
        msgs = [{"role": "user", "content": "?"}, {"role": "assistant", "content": mark}]
        text = tokenizer.apply_chat_template(msgs + [{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        after = text.split(mark, 1)[1]  # the end of turn, then the next user turn, assistant opened
        eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
        return tokenizer.encode(after.removeprefix(eot), add_special_tokens=False)
    return tokenizer.encode("\n\nQuestion: " + question + "\nAnswer:", add_special_tokens=False)


def stop_ids(tokenizer, lm_config) -> list[int]:
    """Token ids that end an answer: the model's end-of-turn / end-of-text tokens."""
    ids = set()
    for src in (getattr(lm_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(src)
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn (trained after every answer so answers stop)."""
    for tok in ("<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            return tid
    return tokenizer.eos_token_id
