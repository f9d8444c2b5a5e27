"""Chat messages built from a statement: one place, shared by every LLM method and format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def prompt_text(task_cfg: dict[str, Any], part: str) -> str | None:
    """``prompt[part]`` (``system`` or ``question``) with ``{target}`` substituted, or None
    when the task has no such part. The one place the substitution happens: the head method's
    text input and the chat messages below read the same words."""
    prompt = task_cfg["prompt"]
    text = prompt.get(part)
    return None if text is None else text.replace("{target}", prompt.get("target") or "")


def build_messages(statement: str, task_cfg: dict[str, Any],
                   answer: str | None = None) -> list[dict[str, str]]:
    """Return ``[system, user(, assistant)]`` chat messages for one statement.

    ``task_cfg["prompt"]`` holds ``system`` (the instruction) and ``question`` (appended to
    the statement); ``{target}`` in either becomes ``prompt["target"]`` (what the answer is). ``answer`` (``"Yes"``/``"No"`` or an age such as ``"67"``) is added as
    the assistant turn when given (training data).

    ``system: None`` (or absent) means no system turn at all: ``[user(, assistant)]``. Some chat
    templates then insert their own default (SmolLM2's: "You are a helpful AI assistant named
    SmolLM, ..."); ``""`` keeps an empty system turn, the shortest prompt with those.
    """
    system = prompt_text(task_cfg, "system")
    msgs = [] if system is None else [{"role": "system", "content": system}]
    msgs.append({"role": "user", "content": f"{statement}\n{prompt_text(task_cfg, 'question')}"})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def format_answer(label: Any, task_type: str, texts: Mapping[str, str] | None = None,
                  decimals: int = 0) -> str:
    """The assistant's answer text for a label: ``Yes``/``No``; a multiclass label's answer
    text (``texts``: label -> text, from the run's classes; the label itself when absent); or
    a number rounded to ``decimals`` (0: a whole number, ``67``), as numeric decoding reads it
    back (:mod:`clinlm.llm.numeric`)."""
    if task_type == "classification":
        return str(label)
    if task_type == "multiclass":
        return str((texts or {}).get(str(label), label))
    return number_text(round(float(label) * 10 ** decimals), decimals)


def number_text(scaled: int, decimals: int) -> str:
    """The answer text of the number ``scaled / 10 ** decimals`` (``-5, 1`` -> ``-0.5``; never
    ``-0.0``): the one spelling training writes and numeric decoding enumerates."""
    scaled = int(scaled)
    if decimals == 0:
        return str(scaled)
    whole, frac = divmod(abs(scaled), 10 ** decimals)
    return ("-" if scaled < 0 else "") + f"{whole}.{frac:0{decimals}d}"


def answer_texts(classes: Mapping[str, Any]) -> dict[str, str]:
    """label -> answer text of a multiclass run's ``classes.json``."""
    return dict(zip(classes["labels"], classes["texts"], strict=True))
