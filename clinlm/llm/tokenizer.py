"""Tokenizers and chat templates: the text side every LLM method shares.

A tokenizer always has a pad token and a chat template (a base model's is the fallback below,
built so the scorers' first-token reading of an answer holds); a vision-language processor
always has a pad token. Split out of :mod:`clinlm.llm.load`, which loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(path: str | Path, padding_side: str = "left", truncation_side: str = "right"):
    """Tokenizer with a pad token (falls back to EOS), a chat template (falls back to
    :func:`fallback_chat_template`) and the given padding/truncation sides."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:  # saved with the adapter: predict and exports read the same
        tok.chat_template = fallback_chat_template(tok)
    tok.padding_side, tok.truncation_side = padding_side, truncation_side
    return tok


# Meta's Llama-2-chat format (the template later Hub revisions of Llama-2-*-chat-hf ship)
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
# base models: "### Question / ### Answer"; @ANSWER@ is the space (sentencepiece: it belongs
# to the answer's first token) or the newline (byte-level BPE: it ends the prompt) before it
PLAIN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '### Question:\\n' + message['content'] + '\\n\\n### Answer:@PROMPT_END@' }}"
    "{% elif message['role'] == 'assistant' %}{{ '@ANSWER_START@' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}")


def fallback_chat_template(tok: Any) -> str:
    """The chat template of a tokenizer that has none (a base model, an old Hub revision).

    The scorers read an answer's first token as the tokenizer splits the bare answer
    (``tok("Yes")``), so the template puts the separator where that token appears: after a
    space in the answer for sentencepiece tokenizers (``"▁Yes"``), after a newline ending the
    prompt for byte-level BPE ones (``"Yes"``). Llama-2-style tokenizers (``<s>``/``</s>``,
    sentencepiece) get Meta's ``[INST] <<SYS>>`` format, others ``### Question / ### Answer``.
    """
    alone = tok("Yes", add_special_tokens=False)["input_ids"]
    spaced = tok("### Answer: Yes", add_special_tokens=False)["input_ids"]
    space_joins = spaced[-len(alone):] == alone and tok("### Answer:", add_special_tokens=False)[
        "input_ids"] == spaced[:-len(alone)]
    if space_joins and tok.bos_token == "<s>" and tok.eos_token == "</s>":
        return LLAMA2_CHAT_TEMPLATE
    prompt_end, answer_start = ("", " ") if space_joins else ("\\n", "")
    return PLAIN_TEMPLATE.replace("@PROMPT_END@", prompt_end).replace("@ANSWER_START@", answer_start)


def load_processor(path: str | Path):
    """A vision-language processor whose tokenizer has a pad token."""
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(str(path))
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return proc
