"""Chat messages built from a statement: one place, shared by every LLM method and format."""

from __future__ import annotations

from typing import Any


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
    prompt = task_cfg["prompt"]
    target = prompt.get("target") or ""
    system = prompt.get("system")
    msgs = [] if system is None else [{"role": "system",
                                       "content": system.replace("{target}", target)}]
    msgs.append({"role": "user",
                 "content": f"{statement}\n{prompt['question'].replace('{target}', target)}"})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def format_answer(label: Any, task_type: str) -> str:
    """The assistant's answer text for a label: ``Yes``/``No``, or a rounded integer age."""
    if task_type == "classification":
        return str(label)
    return str(int(round(float(label))))
