"""Resumable, rate-limited, concurrent jobs: ask a service one question per row, keep every answer.

Nothing here knows about a particular service (Cohere's client lives in
:mod:`clinlm.cohere_client`), tasks or DataFrames:

* :class:`RateLimiter` -- at most ``rpm`` request starts per minute across all threads, evenly
  spaced (no bursts). Hook it into the HTTP client (``httpx`` request event hook) so retries
  made inside an SDK are counted and spaced too.
* :class:`PartialStore` -- append-only JSONL, one flushed line per finished row, so a killed
  run resumes without asking answered rows again.
* :func:`run_jobs` -- a bounded thread pool that calls ``work(row_id, payload)`` for every row
  not already in the store and records the answer, or the :class:`RowFailure` it raised.
  Anything else ``work`` raises (a fatal error: bad key, unknown model) stops the run at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# stop when this many rows in a row end as failures (outage, wrong base_url, ...)
MAX_CONSECUTIVE_FAILURES = 10

Record = dict[str, Any]


class Cancelled(Exception):
    """Work stopped because the run is shutting down (interrupt, fatal error)."""


class RowFailure(Exception):
    """This row got no usable answer; it is recorded (``error``) and the run goes on.

    ``raw``: what the service sent (e.g. a malformed body), kept for inspection.
    ``transient``: the failure may go away (retries ran out, timeout): a resumed run asks
    the row again. Other failures (malformed reply, refused request) are final unless the
    caller asks with ``retry_failed``.
    """

    def __init__(self, message: str, raw: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.raw, self.transient = raw, transient


class RateLimiter:
    """At most ``rpm`` request starts per minute across threads, evenly spaced (no bursts).

    ``rpm=None`` is unlimited. ``stop``: when set, waiting callers raise :class:`Cancelled`
    instead of starting their request. ``requests`` counts the starts granted.
    """

    def __init__(self, rpm: float | None, *, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rpm is not None and not rpm > 0:
            raise ValueError(f"requests per minute must be > 0 or None, got {rpm!r}")
        self.interval = 60.0 / rpm if rpm else 0.0
        self.stop = stop
        self.requests = 0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until this caller may start one request."""
        if self.stop is not None and self.stop.is_set():
            raise Cancelled()
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
            self.requests += 1
        delay = slot - now
        if delay <= 0:
            return
        if self.stop is None:
            time.sleep(delay)
        elif self.stop.wait(delay):
            raise Cancelled()

    def httpx_hook(self, request: Any) -> None:
        """``httpx.Client(event_hooks={"request": [limiter.httpx_hook]})``: every HTTP
        request, retries included, waits for its slot."""
        del request
        self.acquire()


class PartialStore:
    """Append-only JSONL of finished rows, one flushed line per row, tagged with ``key``.

    ``key`` is a hash of everything that determines the answers (model, prompt, ...). On load,
    lines with another ``key`` and a torn last line (killed mid-write) are ignored.
    """

    def __init__(self, path: str | os.PathLike, key: str) -> None:
        self.path, self.key = Path(path), key
        self._lock = threading.Lock()
        self._fh: Any = None

    def load(self) -> dict[str, Record]:
        done: dict[str, Record] = {}
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

    def append(self, rec: Record) -> None:
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
    total: int = 0  # rows given
    resumed: int = 0  # rows taken from the store
    asked: int = 0  # rows asked in this run
    failed: int = 0  # rows asked in this run that ended as a RowFailure


def run_jobs(jobs: Sequence[tuple[str, Any]], work: Callable[[str, Any], str], *,
             store: PartialStore, max_concurrency: int, retry_failed: bool = False,
             stop: threading.Event | None = None,
             on_record: Callable[[Record, int], None] | None = None,
             max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
             progress: bool = True, desc: str = "jobs") -> tuple[dict[str, Record], JobStats]:
    """Run ``work(row_id, payload)`` for every job not already in ``store``; return all records.

    A record is ``{"id", "raw", "error", "transient"}``: ``raw`` is the answer (or the raw
    text of a :class:`RowFailure`), ``error`` is ``None`` or the failure message. Each record
    is appended to ``store`` as soon as it exists. Rows already in the store are not asked
    again, except transient failures (and every failure when ``retry_failed``).

    On any other exception (from ``work``, from ``on_record(record, n_done)``, a
    KeyboardInterrupt) ``stop`` is set, no new job starts, jobs in flight are finished and
    stored (or dropped when they fail too), then the exception propagates. A streak of
    ``max_consecutive_failures`` failed rows stops the run with a ``RuntimeError``.
    """
    from tqdm import tqdm

    stop = stop if stop is not None else threading.Event()
    done = {k: r for k, r in store.load().items() if r.get("error") is None
            or not (r.get("transient") or retry_failed)}
    stats = JobStats(total=len(jobs), resumed=sum(1 for i, _ in jobs if i in done))
    pending: Iterator[tuple[str, Any]] = iter([(i, p) for i, p in jobs if i not in done])

    def run_one(row_id: str, payload: Any) -> Record:
        if stop.is_set():
            raise Cancelled()
        try:
            return {"id": row_id, "raw": work(row_id, payload), "error": None, "transient": False}
        except RowFailure as exc:
            return {"id": row_id, "raw": exc.raw, "error": str(exc), "transient": exc.transient}

    bar = tqdm(total=len(jobs), initial=stats.resumed, desc=desc, unit="row",
               disable=not progress, mininterval=0.5)

    def accept(rec: Record) -> None:
        store.append(rec)
        done[rec["id"]] = rec
        stats.asked += 1
        stats.failed += rec["error"] is not None
        bar.update(1)

    inflight: dict[Future, str] = {}
    streak = 0
    try:
        with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="jobs") as pool:
            try:
                while True:
                    while len(inflight) < max_concurrency and (nxt := next(pending, None)):
                        inflight[pool.submit(run_one, *nxt)] = nxt[0]
                    if not inflight:
                        break
                    finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        inflight.pop(fut)
                        rec = fut.result()  # fatal errors propagate from here
                        accept(rec)
                        streak = 0 if rec["error"] is None else streak + 1
                        if streak >= max_consecutive_failures:
                            raise RuntimeError(
                                f"{streak} rows in a row failed (last: {rec['error']}); "
                                f"stopping. Answers so far are kept in {store.path}; rerun to "
                                "continue (rows that failed transiently are asked again).")
                        if on_record is not None:
                            on_record(rec, len(done))
            except BaseException:
                stop.set()
                for fut in list(inflight):
                    try:
                        accept(fut.result())
                    except Exception as exc:  # noqa: BLE001 - cancelled or failed: not stored
                        log.debug("in-flight job dropped on shutdown: %s", type(exc).__name__)
                raise
    finally:
        bar.close()
        store.close()
    return done, stats
