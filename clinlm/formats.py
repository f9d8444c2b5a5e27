"""Training files for Cohere's chat-finetune API (the local methods read the parquet splits)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clinlm.io import write_jsonl
from clinlm.prompts import build_messages, format_answer

COHERE_ROLES = {"system": "System", "user": "User", "assistant": "Chatbot"}


def chat_records(df: pd.DataFrame, task_cfg: dict, task_type: str) -> list[dict]:
    """One ``{"id", "messages": [system, user, assistant]}`` record per row; the answer as
    the local methods train on it (a multiclass label's declared text, a number rounded to
    ``answer.decimals``)."""
    from clinlm.tasks import AnswerConfig

    answer = AnswerConfig.model_validate(task_cfg.get("answer") or {})  # labels as text
    texts = answer.labels if isinstance(answer.labels, dict) else None
    decimals = answer.decimals
    return [
        {"id": i, "messages": build_messages(s, task_cfg, format_answer(y, task_type, texts,
                                                                       decimals))}
        for i, s, y in zip(df["id"], df["statement"], df["label"], strict=True)
    ]


def cohere_records(chat: list[dict]) -> list[dict]:
    """Cohere chat-finetune format: roles System / User / Chatbot, nothing else per line."""
    return [{"messages": [{"role": COHERE_ROLES[m["role"]], "content": m["content"]}
                          for m in rec["messages"]]} for rec in chat]


def write_formats(train: pd.DataFrame, test: pd.DataFrame, task_cfg: dict, task_type: str,
                  out_dir: Path, eval_fraction: float = 0.1, seed: int = 42) -> dict[str, int]:
    """Write the Cohere training files under ``out_dir``.

    ``cohere_train.jsonl`` / ``cohere_eval.jsonl``: Cohere's chat-finetune format; the eval
    file is a seeded ``eval_fraction`` slice of the *training* split (never the test split,
    which stays untouched until evaluation). No generic chat JSONL is written: the local
    methods (``sft``, ``head``, ...) read ``data/processed/<task>/train.parquet`` themselves.
    """
    chat_train = chat_records(train, task_cfg, task_type)
    eval_ids = set(train["id"].sample(frac=eval_fraction, random_state=seed))
    cohere = cohere_records(chat_train)
    write_jsonl(out_dir / "cohere_train.jsonl",
                [c for c, r in zip(cohere, chat_train, strict=True) if r["id"] not in eval_ids])
    write_jsonl(out_dir / "cohere_eval.jsonl",
                [c for c, r in zip(cohere, chat_train, strict=True) if r["id"] in eval_ids])
    return {"train": len(chat_train), "test": len(test), "cohere_eval": len(eval_ids)}
