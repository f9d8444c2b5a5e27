"""The generic job runner, resumable store and rate limiter (no service, no HTTP)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from clinlm.jobs import Cancelled, PartialStore, RateLimiter, RowFailure, run_jobs

JOBS = [(f"r{i:02d}", i) for i in range(20)]


class Service:
    """Answers ``payload * 10``; ``fail`` maps row -> list of exceptions raised first."""

    def __init__(self, fail: dict[str, list[BaseException]] | None = None,
                 delay: float = 0.0) -> None:
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.delay = delay
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, row_id: str, payload: int) -> str:
        with self.lock:
            self.asked.append(row_id)
            errors = self.fail.get(row_id)
            exc = errors.pop(0) if errors else None
        time.sleep(self.delay)
        if exc is not None:
            raise exc
        return str(payload * 10)


def run(service, store, **kw):
    return run_jobs(JOBS, service, store=store, max_concurrency=kw.pop("max_concurrency", 4),
                    progress=False, **kw)


def test_all_rows_answered_and_stored(tmp_path):
    store = PartialStore(tmp_path / "p.jsonl", "k1")
    done, stats = run(Service(), store)
    assert {i: r["raw"] for i, r in done.items()} == {i: str(p * 10) for i, p in JOBS}
    assert (stats.total, stats.resumed, stats.asked, stats.failed) == (20, 0, 20, 0)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and {x["key"] for x in lines} == {"k1"}


def test_resume_after_interrupt_does_not_ask_finished_rows(tmp_path):
    store = PartialStore(tmp_path / "p.jsonl", "k1")
    first = Service(delay=0.01)

    def interrupt(rec, n_done):
        if n_done >= 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(first, store, on_record=interrupt)
    stored = {json.loads(x)["id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()}
    assert stored == set(first.asked)  # in-flight rows were finished and stored, not lost
    assert 7 <= len(stored) < 20
    with open(tmp_path / "p.jsonl", "a") as f:
        f.write('{"key": "k1", "id": "r1')  # torn by a hard kill
    second = Service()
    done, stats = run(second, store)
    assert not set(second.asked) & stored and len(second.asked) == 20 - len(stored)
    assert stats.resumed == len(stored) and len(done) == 20
    third = Service()
    run(third, store)
    assert third.asked == []  # complete: nothing asked
    other = Service()
    run(other, PartialStore(tmp_path / "p.jsonl", "k2"))  # other settings: nothing reused
    assert len(other.asked) == 20


def test_failures_recorded_and_which_are_asked_again(tmp_path):
    store = PartialStore(tmp_path / "p.jsonl", "k")
    svc = Service({"r01": [RowFailure("timeout", transient=True)],
                   "r02": [RowFailure("bad reply", raw="<html>")]})
    done, stats = run(svc, store)
    assert stats.failed == 2
    assert done["r01"]["error"] == "timeout" and done["r01"]["transient"]
    assert done["r02"] == {"id": "r02", "raw": "<html>", "error": "bad reply", "transient": False}
    svc2 = Service()
    done, _ = run(svc2, store)
    assert svc2.asked == ["r01"] and done["r01"]["error"] is None  # transient: asked again
    assert done["r02"]["error"] == "bad reply"  # final: kept
    svc3 = Service()
    done, _ = run(svc3, store, retry_failed=True)
    assert svc3.asked == ["r02"] and done["r02"]["raw"] == "20"


def test_fatal_error_stops_at_once(tmp_path):
    class Fatal(RuntimeError):
        pass

    svc = Service({i: [Fatal("bad key")] for i, _ in JOBS}, delay=0.01)
    stop = threading.Event()
    with pytest.raises(Fatal, match="bad key"):
        run(svc, PartialStore(tmp_path / "p.jsonl", "k"), stop=stop)
    assert stop.is_set() and len(svc.asked) <= 4  # only the calls already in flight
    assert not (tmp_path / "p.jsonl").exists()  # a fatal error is no row's answer


def test_failure_streak_stops(tmp_path):
    svc = Service({i: [RowFailure("503", transient=True)] for i, _ in JOBS})
    with pytest.raises(RuntimeError, match="3 rows in a row failed"):
        run(svc, PartialStore(tmp_path / "p.jsonl", "k"), max_consecutive_failures=3,
            max_concurrency=1)
    assert len(svc.asked) == 3


def test_rate_limiter_caps_throughput_across_threads(tmp_path):
    limiter = RateLimiter(rpm=1200)  # one start per 50 ms
    stamps: list[float] = []

    def work(row_id, payload):
        limiter.acquire()
        stamps.append(time.monotonic())
        return "ok"

    t0 = time.monotonic()
    run_jobs(JOBS[:12], work, store=PartialStore(tmp_path / "p.jsonl", "k"), max_concurrency=4,
             progress=False)
    assert len(stamps) == 12 and limiter.requests == 12
    # the k-th start is never before slot k (t0 + k * 50 ms): a thread that wakes late only
    # starts later, so the bound holds on a loaded machine, where gaps between wake-ups don't
    late = np.sort(stamps) - (t0 + 0.05 * np.arange(12))
    assert late.min() >= -1e-3, late
    assert (sorted(stamps)[-1] - sorted(stamps)[0]) <= 11 * 0.05 * 1.5  # and not slower


def test_rate_limiter_unlimited_stop_and_bad_rate():
    fast = RateLimiter(None)
    t0 = time.monotonic()
    for _ in range(100):
        fast.acquire()
    assert time.monotonic() - t0 < 0.1 and fast.requests == 100
    stop = threading.Event()
    slow = RateLimiter(rpm=1, stop=stop)
    slow.acquire()  # first slot is free
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        slow.acquire()  # would wait 60 s
    assert time.monotonic() - t0 < 2
    for bad in (0, -5):
        with pytest.raises(ValueError):
            RateLimiter(bad)
