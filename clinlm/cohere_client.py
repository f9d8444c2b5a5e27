"""Plumbing for ``method: cohere``: API key, SDK client, rate limit, retries, resumable answers.

Nothing here knows about tasks or DataFrames (that is :mod:`clinlm.methods.cohere`); this
module only talks to the Cohere API reliably:

* :func:`check_ready` -- fail fast (before any work) when ``CO_API_KEY`` is missing or the
  config is unusable. The key is read ONLY from the environment variable ``CO_API_KEY``; a
  key-like entry in ``params.yaml`` is refused, so it never lands in params, DVC files or logs.
* :func:`make_client` -- a :class:`cohere.ClientV2` with the SDK's own retries switched off
  (``max_retries=0``) so the retry policy below is the only one; the key is handed over
  wrapped in :class:`_SecretToken`, whose ``repr``/``str`` are redacted.
* :class:`RateLimiter` -- client-side requests-per-minute limit shared by all threads (evenly
  spaced slots, no bursts); a ``Retry-After`` from the service pauses every thread.
* :func:`call_with_retries` -- exponential backoff with jitter on 429 / 408 / 5xx / timeouts /
  connection errors, honouring ``Retry-After`` (``retry-after-ms`` too).
* :class:`PartialStore` + :func:`run_chat_jobs` -- bounded thread pool that asks one chat
  request per row and appends each finished row (answer or recorded failure) as one flushed
  JSON line, so a killed run resumes without asking answered rows again.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_KEY = "CO_API_KEY"
# config keys that look like credentials: refused, the key belongs in the environment only
_SECRET_KEY_RE = re.compile(r"(api[_-]?key|token|secret|password|bearer|credential)", re.IGNORECASE)
# a Retry-After longer than this is treated as this (a broken header must not hang a run)
MAX_RETRY_AFTER_S = 600.0
# abort predict when this many rows in a row end as failures (outage, wrong base_url, ...)
MAX_CONSECUTIVE_FAILURES = 10


class MissingAPIKeyError(RuntimeError):
    """``CO_API_KEY`` is not set (or blank)."""


class Cancelled(Exception):
    """Work stopped because the run is shutting down (interrupt, hook, fatal error)."""


class FatalAPIError(RuntimeError):
    """An error that concerns every row (bad key, unknown model): stop the whole run."""


class RowFailure(Exception):
    """This row cannot be answered (malformed reply, 400, retries exhausted): record it."""

    def __init__(self, message: str, raw: str | None = None, attempts: int = 1,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.raw, self.attempts, self.transient = raw, attempts, transient


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CohereSettings:
    """``models.<model>`` keys used by ``method: cohere`` (see :mod:`clinlm.methods.cohere`)."""

    base_model: str = "command-r-08-2024"
    model_id: str | None = None
    base_url: str | None = None
    requests_per_minute: float | None = 40.0
    max_concurrency: int = 4
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0
    few_shot_k: int = 0
    poll_interval_s: float = 30.0
    finetune_hyperparameters: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0
    retry_failed: bool = False
    keep_partial: bool = False


_INT_KEYS = {"max_concurrency", "max_retries", "few_shot_k"}
_FLOAT_KEYS = {"requests_per_minute", "backoff_base_s", "backoff_max_s", "timeout_s",
               "poll_interval_s", "temperature"}
_BOOL_KEYS = {"retry_failed", "keep_partial"}
_STR_KEYS = {"base_model", "model_id", "base_url"}


def _refuse_secret_keys(cfg: Mapping[str, Any]) -> None:
    bad = sorted(k for k in cfg if _SECRET_KEY_RE.search(str(k)))
    if bad:
        # name the keys, never their values
        raise ValueError(
            f"models.<model> must not hold credentials (found key(s) {bad}); remove them from "
            f"params.yaml and export the Cohere key as the environment variable {ENV_KEY}")


def settings_from_cfg(cfg: Mapping[str, Any] | None) -> CohereSettings:
    """Validate ``run.cfg`` and fill defaults. Unknown keys (``method``, ...) are ignored."""
    cfg = dict(cfg or {})
    _refuse_secret_keys(cfg)
    known = {f.name for f in fields(CohereSettings)}
    kw: dict[str, Any] = {}
    for key, value in cfg.items():
        if key not in known or value is None and key not in _STR_KEYS | {"requests_per_minute"}:
            continue
        if key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"models.<model>.{key} must be an integer >= 0, got {value!r}")
        elif key in _FLOAT_KEYS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"models.<model>.{key} must be a number >= 0, got {value!r}")
            value = None if value is None else float(value)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ValueError(f"models.<model>.{key} must be true/false, got {value!r}")
        elif key in _STR_KEYS:
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"models.<model>.{key} must be a non-empty string or null")
        elif key == "finetune_hyperparameters":
            if not isinstance(value, Mapping):
                raise ValueError("models.<model>.finetune_hyperparameters must be a mapping")
            value = dict(value)
        kw[key] = value
    s = CohereSettings(**kw)
    if s.max_concurrency < 1:
        raise ValueError("models.<model>.max_concurrency must be >= 1")
    if s.timeout_s <= 0:
        raise ValueError("models.<model>.timeout_s must be > 0")
    return s


# --------------------------------------------------------------------------- key & client


class _SecretToken:
    """Callable the SDK calls for the bearer token; never shows the key in repr/str/pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<CO_API_KEY redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the Cohere API key cannot be pickled")


def _read_key() -> str:
    key = os.environ.get(ENV_KEY, "").strip()
    if not key:
        raise MissingAPIKeyError(
            f"method 'cohere' needs a Cohere API key in the environment variable {ENV_KEY} "
            f"(e.g. `export {ENV_KEY}=...` before `dvc repro`). It is read only from the "
            "environment, never from params.yaml. Nothing was sent to Cohere.")
    return key


def check_ready(cfg: Mapping[str, Any] | None = None) -> CohereSettings:
    """Fail before any work when the key is missing or the config is invalid.

    Cheap (does not import the SDK); the pipeline can call it before heavy stages. Returns
    the validated settings.
    """
    settings = settings_from_cfg(cfg)
    _read_key()
    return settings


def redact(text: Any) -> Any:
    """Replace the current ``CO_API_KEY`` value in ``text`` (defence in depth)."""
    if not isinstance(text, str):
        return text
    key = os.environ.get(ENV_KEY, "").strip()
    if len(key) >= 4 and key in text:
        text = text.replace(key, "[REDACTED]")
    return text


def make_client(settings: CohereSettings) -> Any:
    """``cohere.ClientV2`` with SDK retries off and the key from ``CO_API_KEY`` only."""
    token = _SecretToken(_read_key())
    import cohere

    kwargs: dict[str, Any] = {}
    if settings.base_url:
        kwargs["base_url"] = settings.base_url.rstrip("/")
    return cohere.ClientV2(
        api_key=token, timeout=settings.timeout_s, max_retries=0, client_name="clinlm",
        log_warning_experimental_features=False, **kwargs)


# --------------------------------------------------------------------------- errors


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for k, v in (headers or {}).items():
        if k.lower() == name:
            return v
    return None


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date)."""
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            return min(max(float(ms) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def service_message(exc: BaseException) -> str:
    """Short human text for an SDK/HTTP error: status and the service's ``message``."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        msg = body.get("message") or body.get("error") or json.dumps(body)[:500]
    elif body is not None:
        msg = str(body)[:500]
    else:
        msg = str(exc)[:500] or type(exc).__name__
    prefix = f"HTTP {status}: " if status is not None else f"{type(exc).__name__}: "
    return redact(prefix + str(msg))


def classify(exc: BaseException, idempotent: bool = True) -> str:
    """``"retry"``, ``"row"`` (record this row as failed), ``"malformed"`` or ``"fatal"``."""
    import httpx
    from cohere.core.api_error import ApiError
    from cohere.core.parse_error import ParsingError

    if isinstance(exc, (Cancelled, MissingAPIKeyError)):
        return "fatal"
    if isinstance(exc, RowFailure):
        return "malformed"
    if isinstance(exc, httpx.TransportError):
        # a request that never reached the server is always safe to repeat
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or idempotent:
            return "retry"
        return "fatal"
    if isinstance(exc, ParsingError):
        return "malformed"
    if isinstance(exc, ApiError):
        status = exc.status_code
        if status is None:
            return "fatal"
        if 200 <= status < 300:  # 2xx whose body the SDK could not decode
            return "malformed"
        if status == 429:
            return "retry"
        if status == 408 or status >= 500:
            return "retry" if idempotent else "fatal"
        if status in (401, 403, 404, 498):
            return "fatal"
        return "row"
    if isinstance(exc, (TypeError, ValueError, AttributeError, KeyError)):
        # the SDK raises these when a 2xx body has the wrong JSON shape (e.g. a list)
        return "malformed"
    return "fatal"


# --------------------------------------------------------------------------- rate limiting


class RateLimiter:
    """At most ``rpm`` request starts per minute across threads, evenly spaced (no bursts)."""

    def __init__(self, rpm: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - now
        if delay > 0:
            _sleep(delay, stop)

    def pause_for(self, seconds: float) -> None:
        """Nobody starts a request in the next ``seconds`` (a service ``Retry-After``)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Cancelled()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": uniform in [d/2, d], d = min(cap, base*2^n)."""
    d = min(cap, base * (2.0 ** attempt))
    return d / 2 + (rng or random).uniform(0, d / 2)


def call_with_retries(fn: Callable[[], Any], *, settings: CohereSettings, limiter: RateLimiter,
                      stop: threading.Event | None = None, idempotent: bool = True,
                      what: str = "request") -> tuple[Any, int]:
    """Run ``fn`` under the rate limit; retry transient errors. Returns ``(result, attempts)``.

    Raises :class:`FatalAPIError`-worthy SDK errors unchanged (callers decide), and
    :class:`RowFailure` when retries are exhausted or the reply is malformed.
    """
    attempts = 0
    while True:
        if stop is not None and stop.is_set():
            raise Cancelled()
        limiter.acquire(stop)
        attempts += 1
        try:
            return fn(), attempts
        except Exception as exc:
            kind = classify(exc, idempotent)
            if isinstance(exc, RowFailure):
                exc.attempts = attempts
                raise
            if kind == "malformed":
                raw = getattr(exc, "raw", None)
                if raw is None and isinstance(getattr(exc, "body", None), str):
                    raw = exc.body
                raise RowFailure(f"malformed reply: {service_message(exc)}",
                                 raw=redact(raw[:2000]) if isinstance(raw, str) else None,
                                 attempts=attempts) from exc
            if kind == "row":
                raise RowFailure(service_message(exc), attempts=attempts) from exc
            if kind == "fatal":
                raise
            if attempts > settings.max_retries:
                raise RowFailure(f"gave up after {attempts} attempts: {service_message(exc)}",
                                 attempts=attempts, transient=True) from exc
            retry_after = parse_retry_after(getattr(exc, "headers", None))
            delay = backoff_delay(attempts - 1, settings.backoff_base_s, settings.backoff_max_s)
            if retry_after is not None:
                limiter.pause_for(retry_after)
                delay = max(delay, retry_after)
            log.debug("%s: %s; retry %d/%d in %.2fs", what, service_message(exc), attempts,
                      settings.max_retries, delay)
            _sleep(delay, stop)


# --------------------------------------------------------------------------- chat


def chat_text(client: Any, model_id: str, messages: list[dict[str, str]],
              temperature: float) -> str:
    """One ``client.chat`` call (v2); the reply's text parts joined."""
    resp = client.chat(model=model_id, messages=messages, temperature=temperature,
                       request_options={"max_retries": 0})
    message = getattr(resp, "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, list):
        raise RowFailure("malformed reply: no message content",
                         raw=redact(_dump(resp))[:2000])
    texts = [getattr(c, "text", None) for c in content if getattr(c, "type", None) == "text"]
    texts = [t for t in texts if isinstance(t, str)]
    if not texts:
        raise RowFailure("malformed reply: no text content", raw=redact(_dump(resp))[:2000])
    return "".join(texts)


def _dump(obj: Any) -> str:
    try:
        return json.dumps(obj.model_dump(mode="json", exclude_none=True))
    except Exception:  # noqa: BLE001
        return repr(obj)


# --------------------------------------------------------------------------- resumable store


class PartialStore:
    """Append-only JSONL of finished rows, one flushed line per row, tagged with ``key``.

    Lines with another ``key`` (other model/prompt/inputs) and a torn last line (killed
    mid-write) are ignored on load.
    """

    def __init__(self, path: str | os.PathLike, key: str) -> None:
        self.path, self.key = Path(path), key
        self._lock = threading.Lock()
        self._fh: Any = None

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        bad = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict) and rec.get("key") == self.key and "id" in rec:
                    done[str(rec["id"])] = rec
        if bad:
            log.warning("%s: ignored %d unreadable line(s) (interrupted write)", self.path, bad)
        return done

    def append(self, rec: dict[str, Any]) -> None:
        line = json.dumps({"key": self.key, **rec}, ensure_ascii=False, default=str)
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - closed in close()
                # a torn last line from a killed run must not swallow our first record
                self._fh.seek(0, os.SEEK_END)
                if self._fh.tell() > 0:
                    self._fh.seek(self._fh.tell() - 1)
                    if self._fh.read(1) != "\n":
                        self._fh.write("\n")
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


@dataclass
class JobStats:
    total: int = 0
    resumed: int = 0
    asked: int = 0
    failed: int = 0
    retries: int = 0


def run_chat_jobs(jobs: Sequence[tuple[str, list[dict[str, str]]]], *, client: Any,
                  model_id: str, settings: CohereSettings, store: PartialStore,
                  on_record: Callable[[dict[str, Any], int], None] | None = None,
                  progress: bool = True, desc: str = "cohere chat",
                  ) -> tuple[dict[str, dict[str, Any]], JobStats]:
    """Ask every job ``(row_id, messages)`` not already in ``store``; return all records.

    A record is ``{"id", "model_id", "raw", "error", "attempts"[, "transient"]}``: ``raw``
    is the reply text (the body for a malformed reply, ``None`` when the call failed),
    ``error`` is ``None`` or why the call failed (retries exhausted = ``transient``,
    malformed reply, 4xx for this row). Each record is appended to the store as soon as it
    exists. Rows already in the store are not asked again, except transient failures (and
    every failure when ``settings.retry_failed``). On an exception (fatal API error,
    ``on_record`` raising, KeyboardInterrupt) no new request starts, calls already in flight
    are finished and stored, then the exception propagates.
    """
    from tqdm import tqdm

    # kept from an earlier run: answers, and failures that asking again would not change
    # (malformed reply, 400); rows whose retries ran out (outage) are asked again
    done = {k: r for k, r in store.load().items() if r.get("error") is None
            or not (r.get("transient") or settings.retry_failed)}
    stats = JobStats(total=len(jobs), resumed=sum(1 for i, _ in jobs if i in done))
    todo = [(i, m) for i, m in jobs if i not in done]
    limiter = RateLimiter(settings.requests_per_minute)
    stop = threading.Event()

    def work(row_id: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": row_id, "model_id": model_id}
        try:
            text, attempts = call_with_retries(
                lambda: chat_text(client, model_id, messages, settings.temperature),
                settings=settings, limiter=limiter, stop=stop, what=f"chat row {row_id}")
            rec.update(raw=redact(text), error=None, attempts=attempts)
        except RowFailure as exc:
            rec.update(raw=exc.raw, error=redact(str(exc)), attempts=exc.attempts,
                       transient=exc.transient)
        return rec

    bar = tqdm(total=len(jobs), initial=stats.resumed, desc=desc, unit="row",
               disable=not progress, mininterval=0.5)
    inflight: dict[Future, str] = {}
    consecutive_failures = 0

    def accept(rec: dict[str, Any]) -> None:
        store.append(rec)
        done[rec["id"]] = rec
        stats.asked += 1
        stats.retries += max(int(rec.get("attempts", 1)) - 1, 0)
        stats.failed += rec.get("error") is not None
        bar.update(1)

    pending: Iterator[tuple[str, list[dict[str, str]]]] = iter(todo)
    try:
        with ThreadPoolExecutor(max_workers=settings.max_concurrency,
                                thread_name_prefix="cohere") as pool:
            try:
                while True:
                    while len(inflight) < settings.max_concurrency:
                        nxt = next(pending, None)
                        if nxt is None:
                            break
                        inflight[pool.submit(work, *nxt)] = nxt[0]
                    if not inflight:
                        break
                    finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        inflight.pop(fut)
                        rec = fut.result()  # fatal errors propagate from here
                        accept(rec)
                        if rec["error"] is None:
                            consecutive_failures = 0
                        else:
                            consecutive_failures += 1
                            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                                raise RuntimeError(
                                    f"{consecutive_failures} rows in a row failed (last: "
                                    f"{rec['error']}); stopping. Answers so far are kept in "
                                    f"{store.path}; rerun to continue (rows whose retries ran "
                                    "out are asked again).")
                        if on_record is not None:
                            on_record(rec, len(done))
            except BaseException:
                stop.set()
                for fut in list(inflight):
                    try:
                        accept(fut.result())
                    except Exception as exc:  # noqa: BLE001 - cancelled or failed: not stored
                        log.debug("in-flight call dropped on shutdown: %s", type(exc).__name__)
                raise
    except Exception as exc:
        from cohere.core.api_error import ApiError

        if isinstance(exc, ApiError):
            raise FatalAPIError(_fatal_message(exc, model_id, settings)) from exc
        raise
    finally:
        bar.close()
        store.close()
    return done, stats


def _fatal_message(exc: Any, model_id: str, settings: CohereSettings) -> str:
    status = getattr(exc, "status_code", None)
    hint = ""
    if status in (401, 498):
        hint = f" The key in {ENV_KEY} was rejected."
    elif status == 403:
        hint = " This key/organisation may not use this model."
    elif status == 404:
        hint = f" Model {model_id!r} was not found (check model_id / base_url)."
    where = settings.base_url or "the Cohere API"
    return redact(f"Cohere chat failed for every row: {service_message(exc)} from {where}.{hint} "
                  "Answers obtained so far are kept; rerun to continue.")
