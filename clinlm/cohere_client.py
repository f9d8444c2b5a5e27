"""Cohere-specific plumbing for ``method: cohere``: settings, API key, SDK client, one chat call.

* :class:`CohereConfig` -- the one home of the ``models.<model>`` keys of ``method: cohere``,
  their defaults and their ranges (pydantic; unknown keys refused).
* :func:`check_ready` -- fail fast (before any work) when ``CO_API_KEY`` is missing or the
  config is unusable. The key is read ONLY from the environment variable ``CO_API_KEY``; a
  key-like entry in ``params.yaml`` is refused, so it never lands in params, DVC files or logs.
* :func:`make_client` -- a :class:`cohere.ClientV2` whose own retries are ON
  (``max_retries``): cohere 7.x retries 429, 408, 409 and 5xx responses and connection errors,
  waits ``retry-after-ms`` / ``Retry-After`` (capped at 60 s) or ``X-RateLimit-Reset`` (+0-20 %
  jitter), else backs off exponentially from 1 s to 60 s (+-10 % jitter); see
  ``cohere/core/http_client.py``. Timeouts are not retried by the SDK: such a row is recorded
  as a transient failure and asked again by the next (resumed) run. An optional
  :class:`clinlm.jobs.RateLimiter` is hooked into the HTTP client so that every request,
  SDK retries included, waits for its slot. The key is handed over wrapped in
  :class:`_SecretToken`, whose ``repr``/``str`` are redacted.
* :func:`chat_text` -- one ``/v2/chat`` call; the reply's text, or :class:`FatalAPIError`
  (bad key, no access, unknown model: the same for every row) or
  :class:`clinlm.jobs.RowFailure` (this row only).

The generic parts (rate limiter, resumable store, job runner) are in :mod:`clinlm.jobs`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clinlm.config import ModelCommon
from clinlm.jobs import RateLimiter, RowFailure

# statuses that concern every row: bad/invalid key, billing, no access, unknown model
FATAL_STATUSES = frozenset({401, 402, 403, 404, 498})


ENV_KEY = "CO_API_KEY"  # the Cohere key: from the environment only, never from params
# config keys that look like credentials: refused, the key belongs in the environment only
_SECRET_KEY_RE = re.compile(r"(api[_-]?key|token|secret|password|bearer|credential)", re.IGNORECASE)
# keys every models.<model> section has; validated by clinlm.params, not here
COMMON_KEYS = frozenset({"method", "description"})
NonEmpty = Annotated[str, Field(min_length=1)]


class CohereConfig(BaseModel):
    """``models.<model>`` keys of ``method: cohere`` (besides ``method`` and ``description``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              hide_input_in_errors=True)  # never echo a value (could be a key)

    base_model: NonEmpty = Field(
        "command-r-08-2024",
        description="Cohere chat model asked at predict (any model id the key may use).")
    base_url: NonEmpty | None = Field(
        None, description="API root; null = the SDK default (https://api.cohere.com).")
    requests_per_minute: float | None = Field(
        40.0, gt=0, description="Client-side limit on HTTP request starts (retries included), "
        "shared by all threads; null = unlimited.")
    max_concurrency: int = Field(4, ge=1, description="Chat requests in flight at once.")
    max_retries: int = Field(
        6, ge=0, description="The SDK's retries per request on 429/408/409/5xx and connection "
        "errors; a row that still fails is recorded as failed (ok=False).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request HTTP timeout (not retried).")
    few_shot_k: int = Field(
        0, ge=0, description="Training statements put before each question as earlier "
        "user/assistant turns (class-balanced, chosen with the run seed at train).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    retry_failed: bool = Field(
        False, description="On resume also ask again rows whose reply was malformed or refused "
        "(4xx); transient failures are always asked again, answered rows never.")
    keep_partial: bool = Field(
        False, description="Keep predictions.<hash>.partial.jsonl after a complete predict.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            bad = sorted(str(k) for k in data if _SECRET_KEY_RE.search(str(k)))
            if bad:  # name the keys, never their values
                raise ValueError(
                    f"models.<model> must not hold credentials (found key(s) {bad}); remove them "
                    f"from params.yaml and export the Cohere key as the environment variable "
                    f"{ENV_KEY}")
        return data

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> CohereConfig:
        """Validate a whole ``models.<model>`` section (``method``/``description`` skipped)."""
        return cls.model_validate({k: v for k, v in (cfg or {}).items() if k not in COMMON_KEYS})


class CohereModelConfig(ModelCommon, CohereConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              hide_input_in_errors=True)
    method: Literal["cohere"]


class MissingAPIKeyError(RuntimeError):
    """``CO_API_KEY`` is not set (or blank)."""


class FatalAPIError(RuntimeError):
    """An error that concerns every row (bad key, unknown model): stop the whole run."""


# --------------------------------------------------------------------------- key & client


class _SecretToken:
    """Callable the SDK calls for the bearer token; never shows the key in repr/str/pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<{ENV_KEY} redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the Cohere API key cannot be pickled")


def read_key() -> str:
    """The key from ``CO_API_KEY`` (the only place it is read from)."""
    key = os.environ.get(ENV_KEY, "").strip()
    if not key:
        raise MissingAPIKeyError(
            f"method 'cohere' needs a Cohere API key in the environment variable {ENV_KEY} "
            f"(e.g. `export {ENV_KEY}=...` before `dvc repro`). It is read only from the "
            "environment, never from params.yaml. Nothing was sent to Cohere.")
    return key


def check_ready(cfg: Mapping[str, Any] | None = None) -> CohereConfig:
    """Validated settings; fails before any work when the config or the key is unusable.

    Cheap (does not import the SDK): the pipeline calls it before heavy stages.
    """
    config = CohereConfig.from_cfg(cfg)
    read_key()
    return config


def redact(text: Any) -> Any:
    """Replace the current ``CO_API_KEY`` value in ``text`` (defence in depth)."""
    if not isinstance(text, str):
        return text
    key = os.environ.get(ENV_KEY, "").strip()
    if len(key) >= 4 and key in text:
        text = text.replace(key, "[REDACTED]")
    return text


def make_client(config: CohereConfig, limiter: RateLimiter | None = None) -> Any:
    """``cohere.ClientV2``: key from ``CO_API_KEY`` only, SDK retries = ``config.max_retries``.

    With ``limiter``, every HTTP request (SDK retries included) first waits for its slot.
    """
    token = _SecretToken(read_key())
    import cohere
    import httpx

    hooks = {"request": [limiter.httpx_hook]} if limiter is not None else {}
    http = httpx.Client(timeout=config.timeout_s, follow_redirects=True, event_hooks=hooks)
    # base_url passed explicitly: ClientV2's default reads $CO_API_URL when cohere is imported
    base_url = config.base_url.rstrip("/") if config.base_url else os.environ.get("CO_API_URL")
    return cohere.ClientV2(
        api_key=token, base_url=base_url, timeout=config.timeout_s,
        max_retries=config.max_retries, httpx_client=http, client_name="clinlm",
        log_warning_experimental_features=False)


# --------------------------------------------------------------------------- chat


def service_message(exc: BaseException) -> str:
    """Short human text for an SDK/HTTP error: status and the service's ``message``."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        msg = body.get("message") or body.get("error") or json.dumps(body, default=str)[:500]
    elif body is not None:
        msg = str(body)[:500]
    else:
        msg = str(exc)[:500] or type(exc).__name__
    prefix = f"HTTP {status}: " if status is not None else f"{type(exc).__name__}: "
    return redact(prefix + str(msg))


def fatal_message(exc: BaseException, model_id: str, base_url: str | None = None) -> str:
    status = getattr(exc, "status_code", None)
    hint = {401: f" The key in {ENV_KEY} was rejected.", 498: f" The key in {ENV_KEY} was rejected.",
            402: " The account's billing limit was reached.",
            403: f" This key/organisation may not use model {model_id!r}.",
            404: f" Model {model_id!r} was not found (check base_model / base_url in params.yaml)."}
    return redact(f"Cohere chat with model {model_id!r} at {base_url or 'the Cohere API'} failed: "
                  f"{service_message(exc)}.{hint.get(status, '')} Stopped at once; answers "
                  "obtained so far are kept, rerun to continue.")


def chat_text(client: Any, model_id: str, messages: list[dict[str, str]], temperature: float,
              base_url: str | None = None) -> str:
    """One ``client.chat`` call (v2; the SDK retries transient errors); the reply's text.

    Raises :class:`FatalAPIError` for 401/402/403/404/498 and :class:`RowFailure` otherwise:
    transient (429/408/409/5xx after the SDK's retries, timeout, connection error) or final
    (other 4xx, malformed reply -- its body kept in ``raw``).
    """
    import httpx
    from cohere.core.api_error import ApiError
    from cohere.core.parse_error import ParsingError

    try:  # a replayed chat only costs tokens: retry server disconnects too
        resp = client.chat(model=model_id, messages=messages, temperature=temperature,
                           request_options={"retry_remote_protocol_errors": True})
    except ApiError as exc:
        status = exc.status_code
        if status in FATAL_STATUSES:
            raise FatalAPIError(fatal_message(exc, model_id, base_url)) from exc
        if status is not None and 200 <= status < 300:  # 2xx whose body is not JSON
            raw = exc.body if isinstance(exc.body, str) else _dump(exc.body)
            raise RowFailure(f"malformed reply: {service_message(exc)}",
                             raw=redact(raw)[:2000]) from exc
        transient = status is None or status in (408, 409, 429) or status >= 500
        raise RowFailure(("no answer after the SDK's retries: " if transient else "refused: ")
                         + service_message(exc), transient=transient) from exc
    except httpx.TransportError as exc:  # timeouts, connection errors after retries
        raise RowFailure(f"no answer: {type(exc).__name__}: {redact(str(exc))[:300]}",
                         transient=True) from exc
    except (ParsingError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise RowFailure(f"malformed reply: {type(exc).__name__}",
                         raw=redact(_dump(getattr(exc, "body", None)))[:2000]) from exc
    content = getattr(getattr(resp, "message", None), "content", None)
    texts = [getattr(c, "text", None) for c in content if getattr(c, "type", None) == "text"] \
        if isinstance(content, list) else []
    texts = [t for t in texts if isinstance(t, str)]
    if not texts:
        raise RowFailure("malformed reply: no text content", raw=redact(_dump(resp))[:2000])
    return redact("".join(texts))


def _dump(obj: Any) -> str:
    try:
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json", exclude_none=True)
        return json.dumps(obj, default=str)
    except Exception:  # noqa: BLE001
        return repr(obj)


__all__ = ["COMMON_KEYS", "ENV_KEY", "CohereConfig", "FatalAPIError", "MissingAPIKeyError",
           "chat_text", "check_ready", "make_client", "read_key", "redact",
           "service_message"]
