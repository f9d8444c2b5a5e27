"""Tests for ``method: cohere`` against a local fake Cohere server (no network, fast)."""

from __future__ import annotations

import json
import logging
import pickle
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.cohere_client import (
    CohereSettings,
    MissingAPIKeyError,
    RateLimiter,
    check_ready,
    make_client,
    parse_retry_after,
    settings_from_cfg,
)
from clinlm.io import DataError
from clinlm.methods import get_method
from clinlm.methods.base import Run
from clinlm.methods.cohere import (
    CohereMethod,
    FatalAPIError,
    parse_answer,
    predict_rows,
    select_few_shot,
)

try:
    from fake_cohere import FakeCohere
except ImportError:  # tests/ imported as a package
    from tests.fake_cohere import FakeCohere

TASK_CFG = {"prompt": {"system": "You are a clinician. Answer Yes or No.",
                       "question": "Will the patient miss the appointment?"}}
# the SDK's own pydantic-v1-style access; not ours
pytestmark = pytest.mark.filterwarnings("ignore:The `__fields__` attribute is deprecated")

REG_CFG = {"prompt": {"system": "Estimate vascular age.", "question": "Vascular age in years?"}}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "sk-test-" + secrets.token_hex(12)
    monkeypatch.setenv("CO_API_KEY", key)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.delenv("CO_API_URL", raising=False)
    return key


def fast_cfg(url: str, **kw) -> dict:
    cfg = {"method": "cohere", "base_url": url, "requests_per_minute": 6000,
           "max_concurrency": 4, "max_retries": 3, "backoff_base_s": 0.01,
           "backoff_max_s": 0.05, "timeout_s": 0.4, "poll_interval_s": 0.01,
           "finetune_hyperparameters": {"train_epochs": 1, "learning_rate": 0.01}}
    cfg.update(kw)
    return cfg


def rows(n: int) -> pd.DataFrame:
    ids = [f"r{i:03d}" for i in range(n)]
    return pd.DataFrame({"id": ids,
                         "statement": [f"Patient {i} (record {i}) is 50 years old." for i in ids],
                         "label": ["Yes" if i % 2 == 0 else "No" for i in range(n)],
                         "f_age": [50.0] * n})


def make_run(tmp_path: Path, cfg: dict, task_type: str = "classification") -> Run:
    data = tmp_path / "processed"
    data.mkdir(parents=True, exist_ok=True)
    conv = [{"messages": [{"role": "System", "content": "sys"},
                          {"role": "User", "content": f"statement {i}"},
                          {"role": "Chatbot", "content": "Yes" if i % 2 else "No"}]}
            for i in range(4)]
    (data / "cohere_train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conv[:3]))
    (data / "cohere_eval.jsonl").write_text(json.dumps(conv[3]) + "\n")
    return Run(task="noshow" if task_type == "classification" else "vascular_age",
               task_type=task_type, model="cohere_ft", cfg=cfg, model_dir=tmp_path / "model",
               data_dir=data, seed=7,
               task_cfg=TASK_CFG if task_type == "classification" else REG_CFG)


# --------------------------------------------------------------------------- key handling


def test_missing_key_fails_before_any_request(monkeypatch, tmp_path):
    monkeypatch.delenv("CO_API_KEY", raising=False)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
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
            predict_rows(rows(4), task_type="classification", task_cfg=TASK_CFG,
                         model_id="m", partial_path=tmp_path / "p.jsonl", cfg=cfg)
        monkeypatch.setenv("CO_API_KEY", "   ")
        with pytest.raises(MissingAPIKeyError):
            check_ready(cfg)
        assert fake.requests == []
    assert not (tmp_path / "model" / "cohere_model.json").exists()
    assert not (tmp_path / "p.jsonl").exists()


def test_key_in_params_is_refused_without_echoing_it(secret):
    with pytest.raises(ValueError, match="CO_API_KEY") as err:
        settings_from_cfg({"api_key": secret, "base_model": "x"})
    assert secret not in str(err.value)
    with pytest.raises(ValueError, match="max_concurrency"):
        settings_from_cfg({"max_concurrency": "four"})


def test_client_repr_and_pickle_do_not_leak_key(secret):
    s = check_ready({"base_url": "http://127.0.0.1:9"})
    client = make_client(s)
    token = client._client_wrapper._token
    assert token() == secret  # the SDK gets the key...
    for text in (repr(client), repr(s), repr(token), str(token), repr(vars(client))):
        assert secret not in text  # ...but nothing prints it
    with pytest.raises(TypeError):
        pickle.dumps(token)
    assert client._client_wrapper.get_max_retries() == 0  # SDK retries off: ours only


# --------------------------------------------------------------------------- train


def test_finetune_lifecycle_to_ready(secret, tmp_path):
    with FakeCohere(secret, dataset_polls=3) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, base_model="command-r-08-2024"))
        facts = CohereMethod().train(run, rows(6))
    saved = json.loads((run.model_dir / "cohere_model.json").read_text())
    assert saved["model_id"] == "ft0001-ft" and saved["finetuned_model_id"] == "ft0001"
    assert saved["dataset_id"] == "ds-1" and saved["status"] == "STATUS_READY"
    assert facts["model_id"] == "ft0001-ft" and facts["status"] == "STATUS_READY"
    assert all(r["auth_ok"] for r in fake.requests)
    calls = [(r["method"], r["path"]) for r in fake.requests]
    assert calls[0] == ("POST", "/v1/datasets")
    assert calls.count(("GET", "/v1/datasets/ds-1")) == 3
    assert ("POST", "/v1/finetuning/finetuned-models") in calls
    assert calls[-1] == ("GET", "/v1/finetuning/finetuned-models/ft0001")
    upload = fake.requests[0]
    assert upload["query"]["type"] == "chat-finetune-input"
    assert upload["files"] == ["data", "eval_data"]
    ds = fake.datasets["ds-1"]
    assert ds["files"] == {"data": "cohere_train.jsonl", "eval_data": "cohere_eval.jsonl"}
    assert len(ds["lines"]["data"]) == 3 and len(ds["lines"]["eval_data"]) == 1
    create = next(r for r in fake.requests if r["path"] == "/v1/finetuning/finetuned-models")
    st = create["json"]["settings"]
    assert st["base_model"] == {"base_type": "BASE_TYPE_CHAT", "name": "command-r-08-2024"}
    assert st["dataset_id"] == "ds-1"
    assert st["hyperparameters"] == {"train_epochs": 1, "learning_rate": 0.01}


def test_empty_eval_file_is_not_uploaded(secret, tmp_path):
    with FakeCohere(secret, dataset_polls=1) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url))
        (run.data_dir / "cohere_eval.jsonl").write_text("")
        CohereMethod().train(run, rows(4))
    assert fake.requests[0]["files"] == ["data"]


def test_bad_training_file_names_row(secret, tmp_path):
    with FakeCohere(secret) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url))
        with open(run.data_dir / "cohere_train.jsonl", "a") as f:
            f.write(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
        with pytest.raises(DataError, match="row 4"):
            CohereMethod().train(run, rows(4))
        assert fake.requests == []


@pytest.mark.parametrize("status,message", [
    (400, "Fine-tuning has been deprecated as of 15 September 2025."),
    (403, "your organization does not have access to fine-tuning"),
    (404, "Not Found"),
])
def test_finetune_refusal_is_clear(secret, tmp_path, status, message):
    with FakeCohere(secret, refuse_finetune=(status, message)) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url))
        with pytest.raises(RuntimeError) as err:
            CohereMethod().train(run, rows(4))
    text = str(err.value)
    for needle in ("refused", "15 September 2025", message, f"HTTP {status}", "model_id:",
                   "few_shot_k", "method: sft", "aya-expanse-8b"):
        assert needle in text, needle
    assert secret not in text
    # exactly one create attempt: a refusal is not retried
    assert sum(r["path"] == "/v1/finetuning/finetuned-models" for r in fake.requests) == 1
    saved = json.loads((run.model_dir / "cohere_model.json").read_text())
    assert saved["model_id"] is None and saved["status"] != "STATUS_READY"
    with pytest.raises(FileNotFoundError, match="model_id"):
        CohereMethod().predict(run, rows(2))


def test_finetune_failed_status_raises(secret, tmp_path):
    with FakeCohere(secret, ft_statuses=("STATUS_QUEUED", "STATUS_FAILED")) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url))
        with pytest.raises(RuntimeError, match="STATUS_FAILED"):
            CohereMethod().train(run, rows(4))
    assert json.loads((run.model_dir / "cohere_model.json").read_text())["status"] == \
        "STATUS_FAILED"


def test_model_id_skips_training_and_uses_few_shot(secret, tmp_path):
    with FakeCohere(secret) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, model_id="command-r-08-2024", few_shot_k=4))
        train_df = rows(10)
        train_df["statement"] = [f"Example s{i:03d}." for i in range(10)]
        CohereMethod().train(run, train_df)
        assert fake.requests == []
        saved = json.loads((run.model_dir / "cohere_model.json").read_text())
        assert saved["model_id"] == "command-r-08-2024"
        assert sorted(ex["answer"] for ex in saved["few_shot"]) == ["No", "No", "Yes", "Yes"]
        out = CohereMethod().predict(run, rows(5))
    assert out["ok"].all() and list(out["p_yes"]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    chats = fake.chat_requests()
    assert len(chats) == 5
    assert {r["model"] for r in chats} == {"command-r-08-2024"}
    assert chats[0]["roles"] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert all(r["temperature"] == 0 for r in chats)
    assert not list(run.model_dir.glob("*.partial.jsonl"))  # removed after a complete run


# --------------------------------------------------------------------------- predict


def test_predict_survives_faults(secret, tmp_path, caplog):
    script = {"r003": ["429:1"], "r005": ["500", "503"], "r007": ["slow"],
              "r009": ["badjson"], "r011": ["text:I cannot tell from this record."],
              "r013": ["noshape"], "r017": ["500"] * 10, "r019": ["400"],
              "r021": ["429", "429"]}
    caplog.set_level(logging.INFO)
    with FakeCohere(secret, chat_script=script, slow_s=1.0) as fake:
        df = rows(30)
        t0 = time.monotonic()
        out = predict_rows(df, task_type="classification", task_cfg=TASK_CFG, model_id="ft1-ft",
                           partial_path=tmp_path / "p.partial.jsonl", cfg=fast_cfg(fake.url))
        elapsed = time.monotonic() - t0
    assert list(out["id"]) == list(df["id"])  # every row, input order
    assert list(out.columns) == ["id", "p_yes", "raw", "ok"]
    bad = {"r009", "r011", "r013", "r017", "r019"}
    assert set(out.loc[~out["ok"], "id"]) == bad
    assert out.loc[~out["ok"], "p_yes"].isna().all()
    good = out[out["ok"]]
    assert (good["p_yes"] == [1.0 if int(i[1:]) % 2 == 0 else 0.0 for i in good["id"]]).all()
    assert out.set_index("id").loc["r011", "raw"] == "I cannot tell from this record."
    assert "message" in out.set_index("id").loc["r009", "raw"]  # malformed body kept
    # retries happened, SDK retries are off (r017: exactly 1 + max_retries requests)
    assert len(fake.chat_requests("r005")) == 3
    assert len(fake.chat_requests("r007")) == 2  # timed out once, then answered
    assert len(fake.chat_requests("r017")) == 4
    assert len(fake.chat_requests("r021")) == 3
    for row in ("r009", "r011", "r013", "r019"):  # not retried: the service answered
        assert len(fake.chat_requests(row)) == 1
    # Retry-After: 1 honoured
    r003 = fake.chat_requests("r003")
    assert [r["status"] for r in r003] == [429, 200]
    assert r003[1]["t"] - r003[0]["t"] >= 0.95
    assert elapsed < 10
    summary = [r.getMessage() for r in caplog.records if "cohere predict" in r.getMessage()]
    assert summary and "1 unparseable" in summary[0] and "4 failed calls" in summary[0]
    # the partial file holds one line per row
    lines = (tmp_path / "p.partial.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(df["id"])


def test_regression_output(secret, tmp_path):
    script = {"r002": ["text:no idea"]}
    with FakeCohere(secret, chat_script=script,
                    answer=lambda row, model: f"About {40 + int(row[1:])}.5 years") as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, model_id="command-r-08-2024"), "regression")
        CohereMethod().train(run, rows(4).assign(label=[50.0, 60.0, 70.0, 80.0]))
        out = CohereMethod().predict(run, rows(4))
    assert list(out.columns) == ["id", "y_pred", "y_lo", "y_hi", "raw", "ok"]
    assert out["y_pred"].tolist()[:2] == [40.5, 41.5] and np.isnan(out["y_pred"][2])
    assert out["y_lo"].isna().all() and out["y_hi"].isna().all()
    assert out["ok"].tolist() == [True, True, False, True]


def test_resume_after_interrupt_asks_no_row_twice(secret, tmp_path):
    partial = tmp_path / "p.partial.jsonl"
    df = rows(30)
    kw = {"task_type": "classification", "task_cfg": TASK_CFG, "model_id": "ft1-ft",
          "partial_path": partial}

    class Killed(Exception):
        pass

    def kill_after_10(rec, n_done):
        if n_done >= 10:
            raise Killed()

    with FakeCohere(secret, chat_script={"r004": ["500"]}) as fake:
        cfg = fast_cfg(fake.url)
        with pytest.raises(Killed):
            predict_rows(df, cfg=cfg, on_record=kill_after_10, **kw)
        first = len(partial.read_text().splitlines())
        assert 10 <= first < 30
        assert len(fake.answered()) == first  # in-flight answers were stored, not lost
        with open(partial, "a") as f:  # a write torn by a hard kill
            f.write('{"key": "0123", "id": "r0')
        out = predict_rows(df, cfg=cfg, **kw)
        answered = fake.answered()
        assert sorted(answered) == sorted(df["id"]) and set(answered.values()) == {1}
        assert len(fake.chat_requests()) == 31  # 30 rows + one retried 500
        assert list(out["id"]) == list(df["id"]) and out["ok"].all()
        # a complete run asks nothing more
        predict_rows(df, cfg=cfg, **kw)
        assert len(fake.chat_requests()) == 31
        # other settings (temperature) -> other key -> nothing reused
        predict_rows(df.head(3), cfg={**cfg, "temperature": 0.5}, **kw)
        assert len(fake.chat_requests()) == 34


def test_which_failures_are_asked_again_on_resume(secret, tmp_path):
    kw = {"task_type": "classification", "task_cfg": TASK_CFG, "model_id": "ft1-ft",
          "partial_path": tmp_path / "p.jsonl"}
    with FakeCohere(secret, chat_script={"r001": ["500"] * 4, "r002": ["400"]}) as fake:
        cfg = fast_cfg(fake.url, max_retries=1)
        out = predict_rows(rows(3), cfg=cfg, **kw)
        assert out["ok"].tolist() == [True, False, False]
        assert len(fake.chat_requests()) == 4  # r001 twice (1 retry), r002 once (no retry)
        # resume: r001 (retries ran out) is asked again, r002 (400) is final
        out = predict_rows(rows(3), cfg=cfg, **kw)
        assert len(fake.chat_requests("r001")) == 4 and len(fake.chat_requests("r002")) == 1
        out = predict_rows(rows(3), cfg=cfg, **kw)
        assert out["ok"].tolist() == [True, True, False] and len(fake.chat_requests()) == 7
        # retry_failed: the 400 row too
        out = predict_rows(rows(3), cfg={**cfg, "retry_failed": True}, **kw)
        assert out["ok"].all() and len(fake.chat_requests()) == 8
        predict_rows(rows(3), cfg=cfg, **kw)
        assert len(fake.chat_requests()) == 8
        assert fake.answered() == {"r000": 1, "r001": 1, "r002": 1}


def test_failure_streak_stops_the_run(secret, tmp_path):
    script = {f"r{i:03d}": ["503"] * 3 for i in range(30)}
    with FakeCohere(secret, chat_script=script) as fake:
        with pytest.raises(RuntimeError, match="10 rows in a row failed"):
            predict_rows(rows(30), task_type="classification", task_cfg=TASK_CFG,
                         model_id="m", partial_path=tmp_path / "p.jsonl",
                         cfg=fast_cfg(fake.url, max_retries=0))
        assert 10 <= len(fake.chat_requests()) <= 14


def test_unknown_model_stops_the_run(secret, tmp_path):
    script = {f"r{i:03d}": ["404"] for i in range(20)}
    with FakeCohere(secret, chat_script=script) as fake:
        with pytest.raises(FatalAPIError, match="not found"):
            predict_rows(rows(20), task_type="classification", task_cfg=TASK_CFG,
                         model_id="nope-ft", partial_path=tmp_path / "p.jsonl",
                         cfg=fast_cfg(fake.url))
        assert len(fake.chat_requests()) <= 4  # stopped at once, not one 404 per row


def test_rate_limit_respected(secret, tmp_path):
    rpm = 600  # 10 requests/s
    with FakeCohere(secret) as fake:
        predict_rows(rows(12), task_type="classification", task_cfg=TASK_CFG, model_id="m",
                     partial_path=tmp_path / "p.jsonl",
                     cfg=fast_cfg(fake.url, requests_per_minute=rpm, max_concurrency=4))
    t = sorted(r["t"] for r in fake.chat_requests())
    assert len(t) == 12
    rate = (len(t) - 1) / (t[-1] - t[0])
    assert rate <= rpm / 60 * 1.15, rate
    assert rate >= rpm / 60 * 0.5, rate  # and not needlessly slow


def test_rate_limiter_spacing_across_threads():
    limiter = RateLimiter(rpm=1200)  # 50 ms
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(3):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    gaps = np.diff(sorted(stamps))
    assert len(stamps) == 12 and gaps.min() >= 0.045, gaps.min()


def test_key_never_leaks(secret, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # includes httpx/httpcore debug output
    script = {"r001": ["429:0"], "r002": ["500"] * 10, "r003": ["badjson"],
              "r004": ["text:unsure"], "r005": ["400"]}
    with FakeCohere(secret, chat_script=script) as fake:
        run = make_run(tmp_path, fast_cfg(fake.url, keep_partial=True, max_retries=1))
        CohereMethod().train(run, rows(4))
        out = CohereMethod().predict(run, rows(8))
        with FakeCohere(secret, refuse_finetune=(400, "deprecated")) as refusing:
            run2 = make_run(tmp_path / "b", fast_cfg(refusing.url))
            with pytest.raises(RuntimeError) as err:
                CohereMethod().train(run2, rows(4))
    assert all(r["auth_ok"] for r in fake.requests)  # the key really was sent
    out_csv = tmp_path / "out.csv"
    out.to_csv(out_csv, index=False)
    captured = capfd.readouterr()
    texts = {"logs": caplog.text, "stdout": captured.out, "stderr": captured.err,
             "error": str(err.value) + repr(err.value), "csv": out_csv.read_text()}
    for p in run.model_dir.iterdir():
        texts[p.name] = p.read_text()
    assert any(name.endswith(".partial.jsonl") for name in texts)
    for name, text in texts.items():
        assert secret not in text, name


# --------------------------------------------------------------------------- units


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


def test_parse_retry_after_forms():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "999999"}) == 600.0
    assert parse_retry_after({"Retry-After": "garbage"}) is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after({"Retry-After": date}) <= 31
    assert parse_retry_after({}) is None


def test_few_shot_selection_balanced_and_seeded():
    df = rows(20)
    a = select_few_shot(df, 6, "classification", seed=1)
    assert a == select_few_shot(df, 6, "classification", seed=1)
    assert sorted(x["answer"] for x in a) == ["No"] * 3 + ["Yes"] * 3
    reg = select_few_shot(df.assign(label=np.arange(20) + 40.4), 3, "regression", seed=1)
    assert len(reg) == 3 and all(x["answer"].isdigit() for x in reg)
    assert select_few_shot(df, 0, "classification") == []


def test_settings_defaults():
    s = settings_from_cfg({"method": "cohere"})
    assert s == CohereSettings()
    assert (s.requests_per_minute, s.max_concurrency, s.max_retries, s.timeout_s) == (40, 4, 6, 60)


def test_hard_kill_then_resume(secret, tmp_path):
    """SIGKILL a real predicting process halfway, resume: every row once, none lost.

    Only a call in flight at the moment of the kill can be asked twice (the server answered,
    the client died before recording it) -- at most ``max_concurrency`` rows.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    partial = tmp_path / "p.partial.jsonl"
    df = rows(30)
    df.to_csv(tmp_path / "rows.csv", index=False)
    script = tmp_path / "run.py"
    with FakeCohere(secret) as fake:
        cfg = fast_cfg(fake.url, requests_per_minute=600, max_concurrency=2)
        script.write_text(
            "import json, sys, pandas as pd\n"
            "from clinlm.methods.cohere import predict_rows\n"
            f"df = pd.read_csv({str(tmp_path / 'rows.csv')!r}, dtype=str)\n"
            f"predict_rows(df, task_type='classification', task_cfg={TASK_CFG!r},\n"
            f"             model_id='ft1-ft', partial_path={str(partial)!r}, cfg={cfg!r})\n")
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
        out = predict_rows(df, task_type="classification", task_cfg=TASK_CFG, model_id="ft1-ft",
                           partial_path=partial, cfg=cfg)
        answered = fake.answered()
    assert list(out["id"]) == list(df["id"]) and out["ok"].all()
    assert sorted(answered) == sorted(df["id"])
    twice = {k for k, v in answered.items() if v > 1}
    assert len(twice) <= cfg["max_concurrency"] and not twice & done_before
