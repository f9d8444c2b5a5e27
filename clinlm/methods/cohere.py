"""``method: cohere`` -- a Cohere hosted chat model, zero- or few-shot, through the API.

Hosted fine-tuning is gone: Cohere retired all fine-tuning through the dashboard and the API
on 15 September 2025, and models fine-tuned earlier are no longer accessible (changelog
"Announcing Major Command Deprecations", https://docs.cohere.com/changelog/2025-09-15-major-command-deprecations;
the ``/v1/finetuning`` endpoints are listed as deprecated). So ``train`` asks nothing of the
API: it records the chat model (``base_model``) and ``few_shot_k`` training examples
(class-balanced, chosen with the run seed) in ``run.model_dir/cohere_model.json``; predict
puts those examples before each question as earlier user/assistant turns. To fine-tune a
Cohere model, train its open weights locally with ``method: sft`` (e.g.
``CohereLabs/aya-expanse-8b``).

API key: ONLY the environment variable ``CO_API_KEY`` (never ``params.yaml``; a key-like
entry there is refused). :func:`check_ready` fails before any work when it is missing.

Config: ``models.<model>`` keys, defaults and ranges are the fields of
:class:`clinlm.cohere_client.CohereConfig` (``base_model``, ``base_url``,
``requests_per_minute``, ``max_concurrency``, ``max_retries``, ``timeout_s``, ``few_shot_k``,
``temperature``, ``retry_failed``, ``keep_partial``).

Predict asks one ``/v2/chat`` request per row (``max_concurrency`` threads, at most
``requests_per_minute`` HTTP requests a minute, the SDK retrying 429/408/409/5xx up to
``max_retries`` times honouring ``Retry-After``) and appends each finished row to
``predictions.<hash>.partial.jsonl`` in ``run.work_dir`` (``data/work/<task>/<model>``, no DVC
output; hash of row ids, model, prompt, few-shot and temperature). A restarted predict skips
the rows already there (rows that failed transiently are asked again); the file is deleted
after a complete predict unless ``keep_partial``.

Output of predict: ``id`` (input order) + ``p_yes`` (1.0 for Yes, 0.0 for No), ``p_<label>``
(multiclass: 1.0 for the label the reply names, 0.0 for the others) or ``y_pred``
(first number in the reply; ``y_lo``/``y_hi`` NaN), ``raw`` (the reply text, kept even when
unparseable) and ``ok`` (False for an unparseable or malformed reply, or a call that failed
after all retries). No row is dropped; the counts are logged. 401/402/403/404/498 stop the
whole run at once (:class:`FatalAPIError`, naming the model, never the key), as does a streak
of 10 failed rows; the partial file keeps what was answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm.cohere_client import (
    CohereConfig,
    CohereModelConfig,
    FatalAPIError,
    MissingAPIKeyError,
    chat_text,
    check_ready,
    make_client,
)
from clinlm.io import DataError, write_json
from clinlm.jobs import PartialStore, RateLimiter, run_jobs
from clinlm.methods.interface import (
    CLASSES_FILE,
    CLASSIFICATION,
    LABELLED,
    MULTICLASS,
    REGRESSION,
    Method,
    Run,
    class_probs,
    read_classes,
    training_classes,
)
from clinlm.prompts import answer_texts, build_messages, format_answer

log = logging.getLogger(__name__)

MODEL_FILE = "cohere_model.json"

__all__ = [
    "CohereMethod",
    "FatalAPIError",
    "MissingAPIKeyError",
    "build_chat",
    "check_ready",
    "parse_answer",
    "partial_key",
    "predict_rows",
    "select_few_shot",
]


# --------------------------------------------------------------------------- prompts & parsing


def build_chat(statement: str, task_cfg: Mapping[str, Any],
               few_shot: Sequence[Mapping[str, str]] = ()) -> list[dict[str, str]]:
    """``build_messages`` for the row, with few-shot turns between system and user."""
    msgs = build_messages(statement, dict(task_cfg))
    shots: list[dict[str, str]] = []
    for ex in few_shot:
        shots += build_messages(ex["statement"], dict(task_cfg), answer=ex["answer"])[1:]
    return [msgs[0], *shots, *msgs[1:]]


_YES_NO_START = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_YES_NO_ANY = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def parse_label(text: str, texts: Mapping[str, str]) -> str | None:
    """The label whose answer text (``texts``: label -> text) the reply gives: the one it
    starts with (the longest, so "atrial flutter" wins over "atrial"), else the only one it
    mentions; None when it names none, or several without starting with one."""
    low = text.strip().lower()
    by_len = sorted(texts.items(), key=lambda kv: -len(kv[1]))
    for label, t in by_len:
        if re.match(rf"^\W*{re.escape(t.lower())}(?!\w)", low):
            return label
    found = {label for label, t in by_len if re.search(rf"(?<!\w){re.escape(t.lower())}(?!\w)", low)}
    return found.pop() if len(found) == 1 else None


def parse_answer(text: str | None, task_type: str,
                 texts: Mapping[str, str] | None = None) -> str | float | None:
    """``"Yes"``/``"No"`` (classification), a label (multiclass: :func:`parse_label` with
    ``texts``) or the first number (regression); None if unparseable.

    Classification takes a leading yes/no, else the only one of yes/no the reply mentions
    (a reply that mentions both, or neither, is unparseable).
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if task_type == MULTICLASS:
        return parse_label(text, texts or {})
    if task_type == CLASSIFICATION:
        m = _YES_NO_START.match(text)
        if m:
            return m.group(1).capitalize()
        found = {w.lower() for w in _YES_NO_ANY.findall(text)}
        return found.pop().capitalize() if len(found) == 1 else None
    if task_type == REGRESSION:
        m = _NUMBER.search(text)
        if not m:
            return None
        value = float(m.group(0).replace(",", "."))
        return value if math.isfinite(value) else None
    raise ValueError(f"unknown task_type {task_type!r}")


def select_few_shot(train_df: pd.DataFrame, k: int, task_type: str,
                    seed: int = 42, texts: Mapping[str, str] | None = None
                    ) -> list[dict[str, str]]:
    """``k`` training examples ``{"statement", "answer"}``; class-balanced for a labelled task
    (``texts``: a multiclass run's label -> answer text)."""
    if k <= 0:
        return []
    for col in ("statement", "label"):
        if col not in train_df.columns:
            raise DataError("train table", "few_shot_k > 0 needs this column", column=col)
    df = train_df.dropna(subset=["statement", "label"])
    if df.empty:
        raise DataError("train table", "no rows with statement and label for few-shot examples")
    rng = np.random.default_rng(seed)
    if task_type in LABELLED:
        groups = [g.iloc[rng.permutation(len(g))] for _, g in df.groupby("label")]
        picked: list[pd.Series] = []
        for j in range(max(len(g) for g in groups)):  # round-robin over the classes
            picked += [g.iloc[j] for g in groups if j < len(g)]
            if len(picked) >= k:
                break
        picked = picked[:k]
        rows = [picked[t] for t in rng.permutation(len(picked))]
    else:
        rows = [df.iloc[t] for t in rng.choice(len(df), size=min(k, len(df)), replace=False)]
    return [{"statement": str(r["statement"]), "answer": format_answer(r["label"], task_type, texts)}
            for r in rows]


def partial_key(ids: Sequence[str], model_id: str, task_type: str, task_cfg: Mapping[str, Any],
                few_shot: Sequence[Mapping[str, str]] = (), temperature: float = 0.0) -> str:
    """Hash of everything that determines the answers: resumed rows must match all of it."""
    prompt = dict(task_cfg["prompt"])
    blob = json.dumps({"ids": list(ids), "model_id": model_id, "task_type": task_type,
                       "system": prompt.get("system"), "question": prompt.get("question"),
                       "few_shot": list(few_shot), "temperature": temperature},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- predict


def _check_predict_input(df: pd.DataFrame) -> None:
    for col in ("id", "statement"):
        if col not in df.columns:
            raise DataError("predict input", "missing column", column=col)
    ids = df["id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError("predict input", f"duplicate id {dup.iloc[0]!r} (ids key the resume file)",
                        row=int(dup.index[0]) if isinstance(dup.index[0], (int, np.integer))
                        else None, column="id")
    bad = df["statement"].isna() | (df["statement"].astype(str).str.strip() == "")
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError("predict input", "empty statement", row=pos, column="statement")


def predict_rows(df: pd.DataFrame, *, task_type: str, task_cfg: Mapping[str, Any],
                 model_id: str, partial_path: str | Path, cfg: Mapping[str, Any] | None = None,
                 few_shot: Sequence[Mapping[str, str]] = (),
                 on_record: Callable[[dict[str, Any], int], None] | None = None,
                 progress: bool = True,
                 classes: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Ask ``model_id`` about every row of ``df``; resumable through ``partial_path``.

    Returns (only once every row has an answer or a recorded failure) a DataFrame with
    ``id`` in input order, ``p_yes`` (classification), ``p_<label>`` (multiclass, the labels
    of ``classes``) or ``y_pred``/``y_lo``/``y_hi`` (regression), ``raw`` (reply text, or the malformed body; None for a failed call) and
    ``ok`` (reply parsed). Rows already in ``partial_path`` (same ids, model, prompt,
    few-shot and temperature) are not asked again. ``on_record(record, n_done)`` is called
    after each new row is stored (tests use it to interrupt a run).
    """
    config = CohereConfig.from_cfg(cfg)
    if task_type not in (CLASSIFICATION, MULTICLASS, REGRESSION):
        raise ValueError(f"unknown task_type {task_type!r}")
    if task_type == MULTICLASS and not classes:
        raise ValueError("multiclass predict needs the run's classes")
    texts = answer_texts(classes) if classes else None
    _check_predict_input(df)
    ids = df["id"].astype(str).tolist()
    jobs = [(i, build_chat(str(s), task_cfg, few_shot))
            for i, s in zip(ids, df["statement"], strict=True)]
    store = PartialStore(partial_path, partial_key(ids, model_id, task_type, task_cfg, few_shot,
                                                   config.temperature))
    stop = threading.Event()
    limiter = RateLimiter(config.requests_per_minute, stop=stop)
    client = make_client(config, limiter)  # MissingAPIKeyError before any request

    def ask(row_id: str, messages: list[dict[str, str]]) -> str:
        del row_id
        return chat_text(client, model_id, messages, config.temperature, config.base_url)

    try:
        done, stats = run_jobs(jobs, ask, store=store, max_concurrency=config.max_concurrency,
                               retry_failed=config.retry_failed, stop=stop, on_record=on_record,
                               progress=progress, desc=f"cohere {model_id}")
    finally:
        with contextlib.suppress(Exception):
            client.__exit__(None, None, None)

    missing = [i for i in ids if i not in done]
    if missing:  # cannot happen unless the loop is broken: never return a partial table
        raise RuntimeError(f"cohere predict: {len(missing)} rows without a record")
    out: dict[str, list[Any]] = {"id": list(df["id"])}
    values, raws, oks = [], [], []
    unparseable, failed = [], []
    for i in ids:
        rec = done[i]
        value = parse_answer(rec.get("raw"), task_type, texts) if rec.get("error") is None else None
        if rec.get("error") is not None:
            failed.append((i, rec["error"]))
        elif value is None:
            unparseable.append((i, rec.get("raw")))
        values.append(value)
        raws.append(rec.get("raw"))
        oks.append(value is not None)
    if task_type == CLASSIFICATION:
        out["p_yes"] = [np.nan if v is None else float(v == "Yes") for v in values]
    elif task_type == MULTICLASS:
        labels = list(classes["labels"])
        p = np.array([[np.nan] * len(labels) if v is None else
                      [float(v == c) for c in labels] for v in values]).reshape(-1, len(labels))
        out.update(class_probs(labels, p))
    else:
        out["y_pred"] = [np.nan if v is None else float(v) for v in values]
        out["y_lo"] = [np.nan] * len(ids)
        out["y_hi"] = [np.nan] * len(ids)
    out["raw"] = raws
    out["ok"] = oks
    for i, raw in unparseable[:20]:
        log.warning("cohere: unparseable reply for id %s: %r", i, (raw or "")[:200])
    for i, err in failed[:20]:
        log.warning("cohere: no answer for id %s: %s", i, err)
    log.info("cohere predict (%s): %d rows, %d from %s, %d asked now in %d HTTP requests "
             "(SDK retries included), %d unparseable replies, %d failed calls", model_id,
             len(ids), stats.resumed, Path(partial_path).name, stats.asked, limiter.requests,
             len(unparseable), len(failed))
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- method


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


class CohereMethod(Method):
    """Cohere hosted chat model: train records model + few-shot examples, predict asks it."""

    name = "cohere"
    config = CohereModelConfig
    numeric_answer = True
    ask_refusal = ("cohere runs call a paid remote API with a resumable per-id store")

    def check_ready(self, run: Run) -> None:
        """Stop with a clear message when ``CO_API_KEY`` is missing or the config is invalid."""
        check_ready(run.cfg)

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """No API call (hosted fine-tuning is retired): save ``base_model`` and the
        ``few_shot_k`` examples predict will use in ``cohere_model.json``."""
        config = check_ready(run.cfg)
        t0 = time.monotonic()
        classes = training_classes(run, train_df) if run.task_type == MULTICLASS else None
        few_shot = select_few_shot(train_df, config.few_shot_k, run.task_type, run.seed,
                                   answer_texts(classes) if classes else None)
        if classes:
            write_json(run.model_dir / CLASSES_FILE, classes)
        write_json(run.model_dir / MODEL_FILE, {
            "model_id": config.base_model, "fine_tuned": False, "task_type": run.task_type,
            "few_shot": few_shot})
        log.info("cohere: %s with %d few-shot examples (no hosted fine-tuning: Cohere retired it)",
                 config.base_model, len(few_shot))
        return {"model_id": config.base_model, "fine_tuned": False, "train_rows": len(train_df),
                "few_shot_k": len(few_shot), "seconds": round(time.monotonic() - t0, 2)}

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        config = check_ready(run.cfg)
        state = _load_state(run.model_dir / MODEL_FILE)
        model_id = state.get("model_id")
        if not model_id:
            raise FileNotFoundError(f"{run.model_dir / MODEL_FILE}: no model_id; run train first")
        few_shot = state.get("few_shot") or []
        ids = df["id"].astype(str).tolist() if "id" in df.columns else []
        key = partial_key(ids, model_id, run.task_type, run.task_cfg, few_shot, config.temperature)
        scratch = run.work_dir or run.model_dir  # work_dir: not a DVC output
        scratch.mkdir(parents=True, exist_ok=True)
        partial = scratch / f"predictions.{key}.partial.jsonl"
        classes = read_classes(run.model_dir) if run.task_type == MULTICLASS else None
        out = predict_rows(df, task_type=run.task_type, task_cfg=run.task_cfg, model_id=model_id,
                           partial_path=partial, cfg=run.cfg, few_shot=few_shot, classes=classes)
        if not config.keep_partial:
            partial.unlink(missing_ok=True)
        return out
