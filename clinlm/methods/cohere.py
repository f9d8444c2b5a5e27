"""``method: cohere`` -- Cohere hosted chat models (fine-tuned, or base with few-shot).

Cohere deprecated hosted fine-tuning on 15 September 2025: expect ``train`` to be refused
unless ``model_id`` is set. The refusal is a clear ``RuntimeError`` naming the ways forward.

API key: ONLY the environment variable ``CO_API_KEY`` (never ``params.yaml``; a key-like
entry there is refused). :func:`check_ready` fails before any work when it is missing.

Config (``models.<model>`` in ``params.yaml``; defaults in brackets):

``base_model`` [``"command-r-08-2024"``]
    Base model that hosted fine-tuning starts from (``BaseModel.name``, base type
    ``BASE_TYPE_CHAT``).
``model_id`` [null]
    When set, training is skipped and this model is used for predict: an existing
    fine-tuned model (``"<finetuned id>-ft"``) or any chat model (e.g.
    ``"command-r-08-2024"``; combine with ``few_shot_k`` for a few-shot baseline).
``base_url`` [null]
    API root; null = SDK default (``https://api.cohere.com``, or ``$CO_API_URL``).
``requests_per_minute`` [40]
    Client-side limit on request starts, shared by all threads (null/0 = unlimited).
``max_concurrency`` [4]
    Chat requests in flight at once (threads).
``max_retries`` [6]
    Retries per request on 429 / 408 / 5xx / timeouts / connection errors (the SDK's own
    retries are switched off). A row that still fails is recorded as failed (``ok=False``).
``backoff_base_s`` [1.0], ``backoff_max_s`` [60]
    Exponential backoff ``min(max, base * 2**n)`` with jitter; a ``Retry-After`` from the
    service takes precedence (and pauses all threads).
``timeout_s`` [60]
    Per-request HTTP timeout (a timeout is retried).
``few_shot_k`` [0]
    Number of training statements (class-balanced for classification, chosen with the run
    seed at train time and saved in ``cohere_model.json``) put before each question as
    earlier user/assistant turns.
``poll_interval_s`` [30]
    Seconds between status polls of dataset validation and fine-tuning.
``finetune_hyperparameters`` [{}]
    Passed to ``cohere.finetuning.Hyperparameters``: ``train_epochs``, ``learning_rate``,
    ``train_batch_size``, ``early_stopping_patience``, ``early_stopping_threshold``,
    ``lora_alpha``, ``lora_rank``, ``lora_target_modules``.
``temperature`` [0]
    Sampling temperature for predict.
``retry_failed`` [false]
    On resume, also ask again rows whose reply was malformed or refused (400); rows whose
    retries ran out are always asked again on resume, answered rows never.
``keep_partial`` [false]
    Keep ``predictions.<hash>.partial.jsonl`` after a complete predict (by default it is
    deleted then). It lives in ``run.work_dir`` (``data/work/<task>/<model>``), which is no
    DVC output, so an interrupted predict never makes the train stage look changed.

Files: train reads ``run.data_dir/cohere_train.jsonl`` (+ ``cohere_eval.jsonl`` when present)
and writes ``run.model_dir/cohere_model.json`` (``model_id``, ``dataset_id``, ``status``,
few-shot examples, ...). Predict appends each answered row to
``run.model_dir/predictions.<hash>.partial.jsonl`` (hash of row ids, model id, prompt,
few-shot and temperature) and, when restarted, skips the rows already there.

Output of predict: ``id`` (input order) + ``p_yes`` (1.0 for Yes, 0.0 for No) or ``y_pred``
(first number in the reply; ``y_lo``/``y_hi`` NaN), ``raw`` (the reply text, kept even when
unparseable) and ``ok`` (False for an unparseable reply, a malformed reply -- not retried,
the service did answer -- or a call that failed after all retries). No row is dropped; the
counts are logged. 401/403/404 on chat stop the whole run (``FatalAPIError``), as does a
streak of 10 failed rows; the partial file keeps what was answered.

Public functions: :func:`check_ready`, :func:`predict_rows` (the resumable predict loop with
an explicit partial path), :func:`finetune`, :func:`parse_answer`, :func:`select_few_shot`,
:func:`build_chat`, :func:`partial_key`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm.cohere_client import (
    CohereSettings,
    FatalAPIError,
    MissingAPIKeyError,
    PartialStore,
    RateLimiter,
    RowFailure,
    call_with_retries,
    check_ready,
    make_client,
    redact,
    run_chat_jobs,
    service_message,
    settings_from_cfg,
)
from clinlm.io import DataError, write_json
from clinlm.methods.base import CLASSIFICATION, REGRESSION, Method, Run
from clinlm.prompts import build_messages, format_answer

log = logging.getLogger(__name__)

MODEL_FILE = "cohere_model.json"
TRAIN_FILE = "cohere_train.jsonl"
EVAL_FILE = "cohere_eval.jsonl"
DATASET_OK = {"validated"}
DATASET_FAILED = {"failed", "skipped", "unknown", "cancelled"}  # as cohere.utils treats them
FT_READY = "STATUS_READY"
FT_FAILED = {"STATUS_FAILED", "STATUS_DELETED"}
_FT_ROLES = {"System", "User", "Chatbot"}

__all__ = [
    "CohereMethod",
    "FatalAPIError",
    "MissingAPIKeyError",
    "build_chat",
    "check_ready",
    "finetune",
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


def parse_answer(text: str | None, task_type: str) -> str | float | None:
    """``"Yes"``/``"No"`` (classification) or the first number (regression); None if unparseable.

    Classification takes a leading yes/no, else the only one of yes/no the reply mentions
    (a reply that mentions both, or neither, is unparseable).
    """
    if not isinstance(text, str) or not text.strip():
        return None
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
                    seed: int = 42) -> list[dict[str, str]]:
    """``k`` training examples ``{"statement", "answer"}``; class-balanced for classification."""
    if k <= 0:
        return []
    for col in ("statement", "label"):
        if col not in train_df.columns:
            raise DataError("train table", "few_shot_k > 0 needs this column", column=col)
    df = train_df.dropna(subset=["statement", "label"])
    if df.empty:
        raise DataError("train table", "no rows with statement and label for few-shot examples")
    rng = np.random.default_rng(seed)
    if task_type == CLASSIFICATION:
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
    return [{"statement": str(r["statement"]), "answer": format_answer(r["label"], task_type)}
            for r in rows]


def partial_key(ids: Sequence[str], model_id: str, task_type: str, task_cfg: Mapping[str, Any],
                few_shot: Sequence[Mapping[str, str]] = (), temperature: float = 0.0) -> str:
    """Hash of everything that determines the answers: resumed rows must match all of it."""
    prompt = dict(task_cfg.get("prompt", {}))
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
                 few_shot: Sequence[Mapping[str, str]] = (), client: Any = None,
                 on_record: Callable[[dict[str, Any], int], None] | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Ask ``model_id`` about every row of ``df``; resumable through ``partial_path``.

    Returns (only once every row has an answer or a recorded failure) a DataFrame with
    ``id`` in input order, ``p_yes`` (classification) or ``y_pred``/``y_lo``/``y_hi``
    (regression), ``raw`` (reply text, or the malformed body; None for a failed call) and
    ``ok`` (reply parsed). Rows already in ``partial_path`` (same ids, model, prompt,
    few-shot and temperature) are not asked again. ``on_record(record, n_done)`` is called
    after each new row is stored (tests use it to interrupt a run).
    """
    settings = settings_from_cfg(cfg)
    if task_type not in (CLASSIFICATION, REGRESSION):
        raise ValueError(f"unknown task_type {task_type!r}")
    _check_predict_input(df)
    ids = df["id"].astype(str).tolist()
    jobs = [(i, build_chat(str(s), task_cfg, few_shot)) for i, s in zip(ids, df["statement"], strict=True)]
    key = partial_key(ids, model_id, task_type, task_cfg, few_shot, settings.temperature)
    store = PartialStore(partial_path, key)
    own_client = client is None
    if own_client:
        client = make_client(settings)  # MissingAPIKeyError before any request
    try:
        done, stats = run_chat_jobs(jobs, client=client, model_id=model_id, settings=settings,
                                    store=store, on_record=on_record, progress=progress,
                                    desc=f"cohere {model_id}")
    finally:
        if own_client:
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
        value = parse_answer(rec.get("raw"), task_type) if rec.get("error") is None else None
        if rec.get("error") is not None:
            failed.append((i, rec["error"]))
        elif value is None:
            unparseable.append((i, rec.get("raw")))
        values.append(value)
        raws.append(rec.get("raw"))
        oks.append(value is not None)
    if task_type == CLASSIFICATION:
        out["p_yes"] = [np.nan if v is None else float(v == "Yes") for v in values]
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
    log.info("cohere predict (%s): %d rows, %d from %s, %d asked now (%d retries), "
             "%d unparseable replies, %d failed calls", model_id, len(ids), stats.resumed,
             Path(partial_path).name, stats.asked, stats.retries, len(unparseable), len(failed))
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- fine-tuning


def _refusal(exc: BaseException, what: str, settings: CohereSettings) -> RuntimeError:
    status = getattr(exc, "status_code", None)
    key_hint = (" (HTTP 401/498 also means the key in CO_API_KEY was rejected)"
                if status in (401, 498) else "")
    return RuntimeError(redact(
        f"Cohere refused hosted fine-tuning at {what} ({service_message(exc)}){key_hint}. "
        "Cohere deprecated hosted fine-tuning on 15 September 2025, so new fine-tuning jobs "
        "are normally refused. To proceed, either: (1) set `model_id:` for this model in "
        "params.yaml to an existing model (a fine-tuned '<id>-ft' or any chat model), which "
        "skips training; (2) use a base model with few-shot prompting, e.g. "
        f"`model_id: {settings.base_model}` and `few_shot_k: 8`; or (3) fine-tune Cohere's "
        "open weights locally with `method: sft` (e.g. `CohereLabs/aya-expanse-8b`)."))


def _api(fn: Callable[[], Any], *, what: str, settings: CohereSettings, limiter: RateLimiter,
         idempotent: bool = True, refusal: bool = False) -> Any:
    """One SDK call with our retry policy; errors turned into clear ``RuntimeError``s."""
    import httpx
    from cohere.core.api_error import ApiError

    try:
        return call_with_retries(fn, settings=settings, limiter=limiter, idempotent=idempotent,
                                 what=what)[0]
    except RowFailure as exc:
        cause = exc.__cause__
        if refusal and isinstance(cause, ApiError) and 400 <= (cause.status_code or 0) < 500:
            raise _refusal(cause, what, settings) from cause
        raise RuntimeError(redact(f"Cohere {what} failed: {exc}")) from exc
    except ApiError as exc:
        if refusal and 400 <= (exc.status_code or 0) < 500:
            raise _refusal(exc, what, settings) from exc
        raise RuntimeError(redact(f"Cohere {what} failed: {service_message(exc)}")) from exc
    except httpx.TransportError as exc:  # non-idempotent call timed out mid-flight
        raise RuntimeError(redact(
            f"Cohere {what} did not complete ({type(exc).__name__}); it may or may not have "
            "been applied: check the Cohere dashboard before running train again.")) from exc


def _check_chat_jsonl(path: Path, min_rows: int) -> int:
    """Validate Cohere's chat-finetune JSONL; return the number of conversations."""
    if not path.is_file():
        raise DataError(path, "missing (run the format stage first)")
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not JSON ({exc.msg})", row=lineno) from None
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise DataError(path, "needs a non-empty 'messages' list", row=lineno,
                                column="messages")
            roles = [m.get("role") if isinstance(m, dict) else None for m in msgs]
            if not set(roles) <= _FT_ROLES or "User" not in roles or "Chatbot" not in roles:
                raise DataError(path, f"roles must be System/User/Chatbot with at least one User "
                                f"and one Chatbot turn, got {roles}", row=lineno, column="role")
            if not all(isinstance(m.get("content"), str) for m in msgs):
                raise DataError(path, "every message needs string content", row=lineno,
                                column="content")
            n += 1
    if n < min_rows:
        raise DataError(path, f"needs at least {min_rows} conversation(s), found {n}")
    return n


def _has_rows(path: Path) -> bool:
    """A JSONL file with at least one non-blank line (the format stage may write none)."""
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        return any(line.strip() for line in f)


def _hyperparameters(hp: Mapping[str, Any]) -> Any:
    from cohere.finetuning import Hyperparameters

    allowed = set(Hyperparameters.model_fields)
    unknown = sorted(set(hp) - allowed)
    if unknown:
        raise ValueError(f"finetune_hyperparameters: unknown key(s) {unknown}; "
                         f"allowed: {sorted(allowed)}")
    return Hyperparameters(**dict(hp)) if hp else None


def _fingerprint(paths: Sequence[Path | None], settings: CohereSettings) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p is not None else b"-")
        h.update(b"\0")
    h.update(json.dumps([settings.base_model, settings.finetune_hyperparameters],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _slug(text: str, n: int = 24) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "x"


def finetune(client: Any, settings: CohereSettings, *, train_path: Path,
             eval_path: Path | None, name: str, state_path: Path,
             extra: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Upload data, wait for validation, fine-tune, poll until READY; return the saved state.

    The state (``model_id`` = ``"<finetuned id>-ft"``, ``dataset_id``, ``status``, ...) is
    written to ``state_path`` after every step, so an interrupted train that is run again
    with the same data and settings resumes the same job instead of paying for a new one.
    """
    from cohere.finetuning import BaseModel, FinetunedModel, Settings
    from tqdm import tqdm

    n_train = _check_chat_jsonl(train_path, min_rows=2)
    n_eval = _check_chat_jsonl(eval_path, min_rows=1) if eval_path is not None else 0
    hp = _hyperparameters(settings.finetune_hyperparameters)
    fp = _fingerprint([train_path, eval_path], settings)
    limiter = RateLimiter(settings.requests_per_minute)
    old = _load_state(state_path)
    resume = old.get("fingerprint") == fp and old.get("status") not in FT_FAILED | {"dataset_failed"}
    state: dict[str, Any] = dict(old) if resume else {
        "model_id": None, "dataset_id": None, "status": "uploading", "finetuned_model_id": None,
        "name": name, "base_model": settings.base_model, "fingerprint": fp,
        "train_conversations": n_train, "eval_conversations": n_eval,
        "hyperparameters": dict(settings.finetune_hyperparameters)}
    state.update(extra or {})
    name = state["name"]

    def save() -> None:
        write_json(state_path, state)

    if resume and state.get("dataset_id"):
        log.info("cohere: resuming fine-tune %s (dataset %s, status %s)", name,
                 state["dataset_id"], state["status"])
    else:
        def upload() -> Any:
            with contextlib.ExitStack() as stack:
                kw: dict[str, Any] = {}
                if eval_path is not None:
                    kw["eval_data"] = (eval_path.name, stack.enter_context(open(eval_path, "rb")))
                return client.datasets.create(
                    name=name, type="chat-finetune-input",
                    data=(train_path.name, stack.enter_context(open(train_path, "rb"))), **kw)

        log.info("cohere: uploading %s (%d conversations) + %s (%d)", train_path.name, n_train,
                 eval_path.name if eval_path else "no eval file", n_eval)
        created = _api(upload, what="dataset upload (POST /v1/datasets)", settings=settings,
                       limiter=limiter, refusal=True)
        if not getattr(created, "id", None):
            raise RuntimeError("Cohere dataset upload returned no dataset id")
        state.update(dataset_id=created.id, status="dataset_uploaded")
        save()

    if not state.get("finetuned_model_id"):
        ds_id = state["dataset_id"]
        with tqdm(desc="cohere dataset validation", unit="poll", disable=not progress,
                  bar_format="{desc}: {elapsed}{postfix}") as bar:
            while True:
                got = _api(lambda: client.datasets.get(id=ds_id),
                           what=f"dataset status (GET /v1/datasets/{ds_id})",
                           settings=settings, limiter=limiter)
                ds = getattr(got, "dataset", None)
                status = getattr(ds, "validation_status", None)
                bar.set_postfix_str(str(status))
                bar.update(1)
                if status in DATASET_OK:
                    break
                if status in DATASET_FAILED:
                    state["status"] = "dataset_failed"
                    save()
                    raise RuntimeError(redact(
                        f"Cohere dataset {ds_id} validation {status}: "
                        f"{getattr(ds, 'validation_error', None) or 'no detail'}"))
                time.sleep(settings.poll_interval_s)
        state["status"] = "dataset_validated"
        save()

        request = FinetunedModel(
            name=name,
            settings=Settings(base_model=BaseModel(base_type="BASE_TYPE_CHAT",
                                                   name=settings.base_model),
                              dataset_id=ds_id, hyperparameters=hp))
        created_ft = _api(lambda: client.finetuning.create_finetuned_model(request=request),
                          what="fine-tune create (POST /v1/finetuning/finetuned-models)",
                          settings=settings, limiter=limiter, idempotent=False, refusal=True)
        ft = getattr(created_ft, "finetuned_model", None)
        if not getattr(ft, "id", None):
            raise RuntimeError("Cohere fine-tune create returned no model id")
        state.update(finetuned_model_id=ft.id, model_id=f"{ft.id}-ft",
                     status=getattr(ft, "status", None) or "STATUS_QUEUED")
        save()
        log.info("cohere: fine-tune %s started (id %s)", name, ft.id)

    ft_id = state["finetuned_model_id"]
    t0 = time.monotonic()
    with tqdm(desc=f"cohere fine-tune {ft_id}", unit="poll", disable=not progress,
              bar_format="{desc}: {elapsed}{postfix}") as bar:
        while True:
            got = _api(lambda: client.finetuning.get_finetuned_model(ft_id),
                       what=f"fine-tune status (GET /v1/finetuning/finetuned-models/{ft_id})",
                       settings=settings, limiter=limiter)
            status = getattr(getattr(got, "finetuned_model", None), "status", None)
            bar.set_postfix_str(str(status))
            bar.update(1)
            if status != state["status"]:
                log.info("cohere: fine-tune %s: %s -> %s (%.0fs)", ft_id, state["status"],
                         status, time.monotonic() - t0)
                state["status"] = status
                save()
            if status == FT_READY:
                break
            if status in FT_FAILED:
                raise RuntimeError(f"Cohere fine-tune {ft_id} ended with {status}; see the "
                                   "Cohere dashboard for its events")
            time.sleep(settings.poll_interval_s)
    return state


# --------------------------------------------------------------------------- method


class CohereMethod(Method):
    """Cohere hosted chat model: train = hosted fine-tune (or reuse ``model_id``)."""

    name = "cohere"

    def check_ready(self, run: Run) -> None:
        """Stop with a clear message when ``CO_API_KEY`` is missing or the config is invalid."""
        check_ready(run.cfg)

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        settings = check_ready(run.cfg)
        t0 = time.monotonic()
        few_shot = select_few_shot(train_df, settings.few_shot_k, run.task_type, run.seed)
        extra = {"few_shot": few_shot, "task_type": run.task_type}
        state_path = run.model_dir / MODEL_FILE
        if settings.model_id:
            state = {"model_id": settings.model_id, "dataset_id": None, "status": "provided",
                     "base_model": settings.base_model, **extra}
            write_json(state_path, state)
            log.info("cohere: model_id %s given, training skipped (%d few-shot examples)",
                     settings.model_id, len(few_shot))
        else:
            eval_path = run.data_dir / EVAL_FILE
            name = (f"clinlm-{_slug(run.task)}-{_slug(run.model)}-"
                    f"{time.strftime('%Y%m%d-%H%M%S')}")
            client = make_client(settings)
            with client:
                state = finetune(client, settings, train_path=run.data_dir / TRAIN_FILE,
                                 eval_path=eval_path if _has_rows(eval_path) else None,
                                 name=name, state_path=state_path, extra=extra)
        return {"model_id": state["model_id"], "dataset_id": state.get("dataset_id"),
                "status": state["status"], "train_rows": len(train_df),
                "few_shot_k": len(few_shot), "seconds": round(time.monotonic() - t0, 2)}

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        settings = check_ready(run.cfg)
        state = _load_state(run.model_dir / MODEL_FILE)
        model_id = state.get("model_id") or settings.model_id
        if not model_id:
            raise FileNotFoundError(f"{run.model_dir / MODEL_FILE}: no model_id; run train first "
                                    "or set model_id in params.yaml")
        few_shot = state.get("few_shot") or []
        ids = df["id"].astype(str).tolist() if "id" in df.columns else []
        key = partial_key(ids, model_id, run.task_type, run.task_cfg, few_shot,
                          settings.temperature)
        scratch = run.work_dir or run.model_dir  # work_dir: not a DVC output
        scratch.mkdir(parents=True, exist_ok=True)
        partial = scratch / f"predictions.{key}.partial.jsonl"
        out = predict_rows(df, task_type=run.task_type, task_cfg=run.task_cfg,
                           model_id=model_id, partial_path=partial, cfg=run.cfg,
                           few_shot=few_shot)
        if not settings.keep_partial:
            partial.unlink(missing_ok=True)
        return out
