"""Chat messages built from a statement: one place, shared by every LLM method and format."""

from __future__ import annotations

from typing import Any


def build_messages(statement: str, task_cfg: dict[str, Any],
                   answer: str | None = None) -> list[dict[str, str]]:
    """Return ``[system, user(, assistant)]`` chat messages for one statement.

    ``task_cfg["prompt"]`` holds ``system`` (the instruction) and ``question`` (appended to
    the statement). ``answer`` (``"Yes"``/``"No"`` or an age such as ``"67"``) is added as
    the assistant turn when given (training data).
    """
    prompt = task_cfg["prompt"]
    msgs = [
        {"role": "system", "content": prompt["system"]},
        {"role": "user", "content": f"{statement}\n{prompt['question']}"},
    ]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def format_answer(label: Any, task_type: str) -> str:
    """The assistant's answer text for a label: ``Yes``/``No``, or a rounded integer age."""
    if task_type == "classification":
        return str(label)
    return str(int(round(float(label))))
