"""``method: cohere`` against a local fake Cohere server (no network, fast).

The retries are the cohere SDK's own (``max_retries``); ``fast_backoff`` shrinks the SDK's
1 s initial backoff where a test only counts requests. The generic runner, store and rate
limiter are unit-tested in ``test_jobs.py``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.cohere_client import CohereConfig, MissingAPIKeyError, check_ready, make_client
from clinlm.methods import get_method
from clinlm.methods.cohere import (
    CohereMethod,
    FatalAPIError,
    parse_answer,
    predict_rows,
    select_few_shot,
)
from clinlm.methods.interface import Run

try:
    from fake_cohere import FakeCohere
except ImportError:  # tests/ imported as a package
    from tests.fake_cohere import FakeCohere

TASK_CFG = {"prompt": {"system": "You are a clinician. Answer Yes or No.",
                       "question": "Will the patient miss the appointment?"}}
REG_CFG = {"prompt": {"system": "Estimate vascular age.", "question": "Vascular age in years?"}}
# the SDK's own pydantic-v1-style access; not ours
pytestmark = pytest.mark.filterwarnings("ignore:The `__fields__` attribute is deprecated")


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "sk-test-" + secrets.token_hex(12)
    monkeypatch.setenv("CO_API_KEY", key)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.delenv("CO_API_URL", raising=False)
    return key


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's exponential backoff starts at 10 ms instead of 1 s (Retry-After unchanged)."""
    monkeypatch.setattr("cohere.core.http_client.INITIAL_RETRY_DELAY_SECONDS", 0.01)


def fast_cfg(url: str, **kw) -> dict:
    return {"method": "cohere", "base_url": url, "requests_per_minute": 6000,
            "max_concurrency": 4, "max_retries": 3, "timeout_s": 0.4, **kw}


def rows(n: int) -> pd.DataFrame:
    ids = [f"r{i:03d}" for i in range(n)]
    return pd.DataFrame({"id": ids,
                         "statement": [f"Patient {i} (record {i}) is 50 years old." for i in ids],
                         "label": ["Yes" if i % 2 == 0 else "No" for i in range(n)],
                         "f_age": [50.0] * n})


def make_run(tmp_path: Path, cfg: dict, task_type: str = "classification") -> Run:
    return Run(task="noshow" if task_type == "classification" else "vascular_age",
               task_type=task_type, model="cohere-api", cfg=cfg, model_dir=tmp_path / "model",
               data_dir=tmp_path / "processed", seed=7, work_dir=tmp_path / "work",
               task_cfg=TASK_CFG if task_type == "classification" else REG_CFG)


def predict(df: pd.DataFrame, cfg: dict, partial: Path, model_id: str = "m", **kw) -> pd.DataFrame:
    return predict_rows(df, task_type="classification", task_cfg=TASK_CFG, model_id=model_id,
                        partial_path=partial, cfg=cfg, progress=False, **kw)


def test_missing_key_fails_before_any_request(monkeypatch, tmp_path):
    monkeypatch.delenv("CO_API_KEY", raising=False)
    with FakeCohere("whatever") as fake:
        cfg = fast_cfg(fake.url)
        run = make_run(tmp_path, cfg)
        with pytest.raises(MissingAPIKeyError, match="CO_API_KEY"):
            check_ready(cfg)
        with pytest.raises(MissingAPIKeyError):
            get_method("cohere").train(run, rows(4))
        with pytest.raises(MissingAPIKeyError):
            CohereMethod().predict(run, rows(4))
        with pytest.raises(MissingAPIKeyError):
            predict(rows(4), cfg, tmp_path / "p.jsonl")
        monkeypatch.setenv("CO_API_KEY", "   ")
        with pytest.raises(MissingAPIKeyError):
            check_ready(cfg)
        assert fake.requests == []
    assert not (tmp_path / "model" / "cohere_model.json").exists()
    assert not (tmp_path / "p.jsonl").exists()


def test_key_in_params_is_refused_without_echoing_it(secret):
    with pytest.raises(ValueError, match="CO_API_KEY") as err:
        CohereConfig.from_cfg({"api_key": secret, "base_model": "x"})
    assert secret not in str(err.value) and secret not in repr(err.value)
    with pytest.raises(ValueError, match="max_concurrency") as err:
        CohereConfig.from_cfg({"max_concurrency": secret})
    assert secret not in str(err.value)  # no input is echoed in errors


def test_config_defaults_and_ranges():
    c = CohereConfig.from_cfg({"method": "cohere", "description": "ignored here"})
    assert c == CohereConfig()
    assert (c.base_model, c.base_url, c.requests_per_minute, c.max_concurrency, c.max_retries,
            c.timeout_s, c.few_shot_k, c.temperature, c.retry_failed, c.keep_partial) == \
        ("command-r-08-2024", None, 40.0, 4, 6, 60.0, 0, 0.0, False, False)
    assert CohereConfig.from_cfg({"requests_per_minute": None}).requests_per_minute is None
    for bad in ({"requests_per_minute": 0}, {"max_concurrency": 0}, {"max_retries": -1},
                {"timeout_s": 0}, {"few_shot_k": -1}, {"temperature": -0.1},
                {"max_retries": True}, {"base_model": ""}, {"retry_failed": "yes"},
                {"poll_interval_s": 30}, {"model_id": "x"}, {"backoff_base_s": 1}):
        with pytest.raises(ValueError):
            CohereConfig.from_cfg(bad)


def test_client_has_sdk_retries_on_and_does_not_leak_key(secret):
    client = make_client(check_ready({"base_url": "http://127.0.0.1:9", "max_retries": 5}))
    token = client._client_wrapper._token
    assert token() == secret  # the SDK gets the key...
    for text in (repr(client), repr(token), str(token), repr(vars(client))):
        assert secret not in text  # ...but nothing prints it
    with pytest.raises(TypeError):
        pickle.dumps(token)
    assert client._client_wrapper.get_max_retries() == 5  # the SDK retries, from params


def test_train_records_model_and_few_shot_without_api_calls(secret, tmp_path):
    with FakeCohere(secret) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, base_model="command-a-03-2025", few_shot_k=4))
        train_df = rows(10)
        train_df["statement"] = [f"Example s{i:03d}." for i in range(10)]
        facts = CohereMethod().train(run, train_df)
        assert fake.requests == []  # hosted fine-tuning is retired: nothing to ask
        saved = json.loads((run.model_dir / "cohere_model.json").read_text())
        assert saved["model_id"] == facts["model_id"] == "command-a-03-2025"
        assert saved["fine_tuned"] is False and facts["few_shot_k"] == 4
        assert sorted(ex["answer"] for ex in saved["few_shot"]) == ["No", "No", "Yes", "Yes"]
        out = CohereMethod().predict(run, rows(5))
    assert out["ok"].all() and list(out["p_yes"]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    chats = fake.chat_requests()
    assert len(chats) == 5 and all(r["auth_ok"] for r in chats)
    assert {r["model"] for r in chats} == {"command-a-03-2025"}
    assert chats[0]["roles"] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert all(r["temperature"] == 0 for r in chats)
    assert not list((tmp_path / "work").glob("*.partial.jsonl"))  # removed after a complete run


def test_predict_without_train_is_clear(secret, tmp_path):
    with pytest.raises(FileNotFoundError, match="run train first"):
        CohereMethod().predict(make_run(tmp_path, fast_cfg("http://127.0.0.1:9")), rows(2))


def test_sdk_retries_429_with_retry_after_and_503_then_rows_succeed(secret, tmp_path, caplog):
    """Real SDK timings: Retry-After: 1 is waited exactly, a 503 backs off ~1 s (+-10 %)."""
    caplog.set_level(logging.INFO)
    with FakeCohere(secret, chat_script={"r001": ["429:1"], "r002": ["503"]}) as fake:
        out = predict(rows(4), fast_cfg(fake.url, max_retries=2), tmp_path / "p.jsonl")
    assert out["ok"].all() and list(out["p_yes"]) == [1.0, 0.0, 1.0, 0.0]
    r1, r2 = fake.chat_requests("r001"), fake.chat_requests("r002")
    assert [r["status"] for r in r1] == [429, 200] and [r["status"] for r in r2] == [503, 200]
    assert r1[1]["t"] - r1[0]["t"] >= 0.95
    assert r2[1]["t"] - r2[0]["t"] >= 0.85
    assert len(fake.chat_requests()) == 6  # 4 rows + 2 retries, nothing else
    summary = next(r.getMessage() for r in caplog.records if "cohere predict" in r.getMessage())
    assert "4 asked now in 6 HTTP requests" in summary  # our count == the server's count


def test_predict_survives_faults(secret, tmp_path, caplog, fast_backoff):
    script = {"r003": ["429"], "r005": ["500", "503"], "r007": ["slow"], "r009": ["badjson"],
              "r011": ["text:I cannot tell from this record."], "r013": ["noshape"],
              "r017": ["500"] * 10, "r019": ["400"], "r021": ["429", "429"]}
    caplog.set_level(logging.INFO)
    with FakeCohere(secret, chat_script=script, slow_s=1.0) as fake:
        df = rows(30)
        t0 = time.monotonic()
        out = predict(df, fast_cfg(fake.url), tmp_path / "p.partial.jsonl")
        elapsed = time.monotonic() - t0
    assert list(out["id"]) == list(df["id"])  # every row, input order
    assert list(out.columns) == ["id", "p_yes", "raw", "ok"]
    bad = {"r007", "r009", "r011", "r013", "r017", "r019"}
    assert set(out.loc[~out["ok"], "id"]) == bad
    assert out.loc[~out["ok"], "p_yes"].isna().all()
    good = out[out["ok"]]
    assert (good["p_yes"] == [1.0 if int(i[1:]) % 2 == 0 else 0.0 for i in good["id"]]).all()
    by_id = out.set_index("id")
    assert by_id.loc["r011", "raw"] == "I cannot tell from this record."
    assert "message" in by_id.loc["r009", "raw"]  # malformed body kept
    counts = {row: len(fake.chat_requests(row)) for row in script}
    assert counts == {"r003": 2, "r005": 3, "r007": 1, "r009": 1, "r011": 1, "r013": 1,
                      "r017": 4, "r019": 1, "r021": 3}  # r017: 1 + max_retries; timeout not retried
    assert elapsed < 10
    summary = [r.getMessage() for r in caplog.records if "cohere predict" in r.getMessage()]
    assert summary and "1 unparseable" in summary[0] and "5 failed calls" in summary[0]
    assert f"in {len(fake.chat_requests())} HTTP requests" in summary[0]
    lines = [json.loads(x) for x in (tmp_path / "p.partial.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(df["id"])
    transient = {x["id"] for x in lines if x["transient"]}
    assert transient == {"r007", "r017"}  # asked again on resume; r009/r013/r019 are final


def test_regression_output(secret, tmp_path):
    with FakeCohere(secret, chat_script={"r002": ["text:no idea"]},
                    answer=lambda row, model: f"About {40 + int(row[1:])}.5 years") as fake:
        run = make_run(tmp_path, fast_cfg(fake.url), "regression")
        CohereMethod().train(run, rows(4).assign(label=[50.0, 60.0, 70.0, 80.0]))
        out = CohereMethod().predict(run, rows(4))
    assert list(out.columns) == ["id", "y_pred", "y_lo", "y_hi", "raw", "ok"]
    assert out["y_pred"].tolist()[:2] == [40.5, 41.5] and np.isnan(out["y_pred"][2])
    assert out["y_lo"].isna().all() and out["y_hi"].isna().all()
    assert out["ok"].tolist() == [True, True, False, True]


def test_bad_key_401_stops_at_once_without_the_key(secret, tmp_path):
    with FakeCohere("the-right-key") as fake:
        with pytest.raises(FatalAPIError) as err:
            predict(rows(20), fast_cfg(fake.url), tmp_path / "p.jsonl", model_id="my-model")
        n = len(fake.chat_requests())
    text = str(err.value)
    for needle in ("HTTP 401", "CO_API_KEY", "rejected", "'my-model'", "Stopped at once"):
        assert needle in text, needle
    assert secret not in text and secret not in repr(err.value)
    assert 1 <= n <= 4  # stopped at once: at most the calls already in flight, no retries


def test_unknown_model_stops_the_run(secret, tmp_path):
    with FakeCohere(secret, models={"command-r-08-2024"}) as fake:
        with pytest.raises(FatalAPIError, match=r"'nope-ft' was not found"):
            predict(rows(20), fast_cfg(fake.url), tmp_path / "p.jsonl", model_id="nope-ft")
        assert len(fake.chat_requests()) <= 4  # not one 404 per row


def test_failure_streak_stops_the_run(secret, tmp_path):
    with FakeCohere(secret, chat_script={f"r{i:03d}": ["503"] for i in range(30)}) as fake:
        with pytest.raises(RuntimeError, match="10 rows in a row failed"):
            predict(rows(30), fast_cfg(fake.url, max_retries=0), tmp_path / "p.jsonl")
        assert 10 <= len(fake.chat_requests()) <= 14


def test_resume_after_interrupt_asks_no_row_twice(secret, tmp_path, fast_backoff):
    partial, df = tmp_path / "p.partial.jsonl", rows(30)

    class Killed(Exception):
        pass

    def kill_after_10(rec, n_done):
        if n_done >= 10:
            raise Killed()

    with FakeCohere(secret, chat_script={"r004": ["500"]}) as fake:
        cfg = fast_cfg(fake.url)
        with pytest.raises(Killed):
            predict(df, cfg, partial, on_record=kill_after_10)
        first = len(partial.read_text().splitlines())
        assert 10 <= first < 30
        assert len(fake.answered()) == first  # in-flight answers were stored, not lost
        with open(partial, "a") as f:  # a write torn by a hard kill
            f.write('{"key": "0123", "id": "r0')
        out = predict(df, cfg, partial)
        answered = fake.answered()
        assert sorted(answered) == sorted(df["id"]) and set(answered.values()) == {1}
        assert len(fake.chat_requests()) == 31  # 30 rows + the SDK's retry of one 500
        assert list(out["id"]) == list(df["id"]) and out["ok"].all()
        predict(df, cfg, partial)  # a complete run asks nothing more
        assert len(fake.chat_requests()) == 31
        predict(df.head(3), {**cfg, "temperature": 0.5}, partial)  # other settings: other key
        assert len(fake.chat_requests()) == 34


def test_which_failures_are_asked_again_on_resume(secret, tmp_path, fast_backoff):
    p = tmp_path / "p.jsonl"
    with FakeCohere(secret, chat_script={"r001": ["500"] * 4, "r002": ["400"]}) as fake:
        cfg = fast_cfg(fake.url, max_retries=1)
        assert predict(rows(3), cfg, p)["ok"].tolist() == [True, False, False]
        assert len(fake.chat_requests()) == 4  # r001 twice (1 SDK retry), r002 once
        predict(rows(3), cfg, p)  # r001 (retries ran out) asked again, r002 (400) is final
        assert len(fake.chat_requests("r001")) == 4 and len(fake.chat_requests("r002")) == 1
        out = predict(rows(3), cfg, p)
        assert out["ok"].tolist() == [True, True, False] and len(fake.chat_requests()) == 7
        out = predict(rows(3), {**cfg, "retry_failed": True}, p)  # the 400 row too
        assert out["ok"].all() and len(fake.chat_requests()) == 8
        predict(rows(3), cfg, p)
        assert len(fake.chat_requests()) == 8
        assert fake.answered() == {"r000": 1, "r001": 1, "r002": 1}


def test_hard_kill_then_resume(secret, tmp_path):
    """SIGKILL a real predicting process halfway, resume: every row once, none lost.

    Only a call in flight at the moment of the kill can be asked twice (the server answered,
    the client died before recording it) -- at most ``max_concurrency`` rows.
    """
    partial, df = tmp_path / "p.partial.jsonl", rows(30)
    df.to_csv(tmp_path / "rows.csv", index=False)
    script = tmp_path / "run.py"
    with FakeCohere(secret) as fake:
        cfg = fast_cfg(fake.url, requests_per_minute=600, max_concurrency=2)
        script.write_text(
            "import pandas as pd\n"
            "from clinlm.methods.cohere import predict_rows\n"
            f"df = pd.read_csv({str(tmp_path / 'rows.csv')!r}, dtype=str)\n"
            f"predict_rows(df, task_type='classification', task_cfg={TASK_CFG!r},\n"
            f"             model_id='m', partial_path={str(partial)!r}, cfg={cfg!r})\n")
        proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if partial.exists() and len(partial.read_text().splitlines()) >= 10:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = {json.loads(x)["id"] for x in partial.read_text().splitlines()
                       if x.strip().endswith("}")}
        assert 10 <= len(done_before) < 30
        out = predict(df, cfg, partial)
        answered = fake.answered()
    assert list(out["id"]) == list(df["id"]) and out["ok"].all()
    assert sorted(answered) == sorted(df["id"])
    twice = {k for k, v in answered.items() if v > 1}
    assert len(twice) <= cfg["max_concurrency"] and not twice & done_before


def test_rate_limit_caps_every_request_sdk_retries_included(secret, tmp_path, fast_backoff):
    rpm = 600  # 10 requests/s
    with FakeCohere(secret, chat_script={"r001": ["503", "503"], "r005": ["429"]}) as fake:
        predict(rows(12), fast_cfg(fake.url, requests_per_minute=rpm), tmp_path / "p.jsonl")
    t = sorted(r["t"] for r in fake.chat_requests())
    assert len(t) == 15  # 12 rows + 3 SDK retries, each waited for its slot
    rate = (len(t) - 1) / (t[-1] - t[0])
    assert rate <= rpm / 60 * 1.15, rate
    assert rate >= rpm / 60 * 0.5, rate  # and not needlessly slow
    t = np.array(t)
    assert (t[4:] - t[:-4]).min() >= 0.3  # evenly spaced (4 slots = 0.4 s), no bursts


def test_key_never_leaks(secret, tmp_path, caplog, capfd, fast_backoff):
    caplog.set_level(logging.DEBUG)  # includes httpx/httpcore debug output
    script = {"r001": ["429:0"], "r002": ["500"] * 10, "r003": ["badjson"],
              "r004": ["text:unsure"], "r005": ["400"]}
    with FakeCohere(secret, chat_script=script) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, keep_partial=True, max_retries=1))
        CohereMethod().train(run, rows(4))
        out = CohereMethod().predict(run, rows(8))
    with FakeCohere("another-key") as refusing, pytest.raises(FatalAPIError) as err:
        predict(rows(2), fast_cfg(refusing.url), tmp_path / "b.jsonl")
    assert all(r["auth_ok"] for r in fake.requests)  # the key really was sent
    out.to_csv(tmp_path / "out.csv", index=False)
    captured = capfd.readouterr()
    texts = {"logs": caplog.text, "stdout": captured.out, "stderr": captured.err,
             "error": str(err.value) + repr(err.value), "csv": (tmp_path / "out.csv").read_text()}
    for p in [*run.model_dir.iterdir(), *(tmp_path / "work").iterdir()]:
        texts[p.name] = p.read_text()
    assert any(name.endswith(".partial.jsonl") for name in texts)
    for name, text in texts.items():
        assert secret not in text, name


@pytest.mark.parametrize("text,expected", [
    ("Yes", "Yes"), ("no.", "No"), ("  YES, the patient will.", "Yes"),
    ("Answer: No", "No"), ("I think yes", "Yes"), ("Yes or no?", "Yes"),
    ("It could be yes or no", None), ("Maybe", None), ("", None), (None, None),
    ("Yesterday", None), ("Nobody knows", None),
])
def test_parse_classification(text, expected):
    assert parse_answer(text, "classification") == expected


@pytest.mark.parametrize("text,expected", [
    ("67", 67.0), ("About 63.5 years", 63.5), ("Age: 70 (range 65-75)", 70.0),
    ("seventy", None), ("", None),
])
def test_parse_regression(text, expected):
    assert parse_answer(text, "regression") == expected


def test_few_shot_selection_balanced_and_seeded():
    df = rows(20)
    a = select_few_shot(df, 6, "classification", seed=1)
    assert a == select_few_shot(df, 6, "classification", seed=1)
    assert sorted(x["answer"] for x in a) == ["No"] * 3 + ["Yes"] * 3
    reg = select_few_shot(df.assign(label=np.arange(20) + 40.4), 3, "regression", seed=1)
    assert len(reg) == 3 and all(re.fullmatch(r"\d+", x["answer"]) for x in reg)
    assert select_few_shot(df, 0, "classification") == []
