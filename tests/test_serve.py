"""`python -m clinlm serve`: the real server process on 127.0.0.1, queried with httpx.

Models are loaded once at start (gbdt for both tasks, sft on the tiny random Llama); every
bad request gets a JSON error naming the row/field and the server log stays free of
tracebacks.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_project import SFT_RUN, build_project, running_server

RUNS = ["vascular-gbdt", "noshow-gbdt", SFT_RUN]
MAX_ROWS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama):
    project = build_project(tmp_path_factory, tiny_llama)
    with running_server(project, RUNS, "--max-rows", str(MAX_ROWS)) as (url, log):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, log
    assert "Traceback" not in log.read_text()  # no request crashed the server


@pytest.fixture(scope="module")
def fields(server):
    client, _ = server
    return {r["run"]: r for r in client.get("/api/runs").json()["runs"]}


def example(fields, run: str) -> dict:
    return {f["name"]: f["example"] for f in fields[run]["fields"] if f["example"] is not None}


def test_health_and_runs(server, fields):
    client, _ = server
    assert client.get("/health").json() == {"status": "ok", "runs": sorted(RUNS)}
    assert fields["vascular-gbdt"]["task"] == "vascular_age"
    assert fields[SFT_RUN]["method"] == "sft" and fields[SFT_RUN]["threshold"] == 0.5
    for run in RUNS:
        names = [f["name"] for f in fields[run]["fields"]]
        assert names and len(names) == len(set(names))
        assert fields[run]["question"].endswith("?")


def test_predict_one_subject_regression(server, fields):
    client, _ = server
    r = client.post("/predict", json={"run": "vascular-gbdt",
                                      "fields": {**example(fields, "vascular-gbdt"), "age": 44}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["run"] == "vascular-gbdt" and body["method"] == "gbdt"
    (a,) = body["predictions"]
    assert a["y_lo"] <= a["y_pred"] <= a["y_hi"] and a["prediction"] == a["y_pred"]
    assert "44-year-old" in a["statement"]


@pytest.mark.parametrize("run", ["noshow-gbdt", SFT_RUN])
def test_predict_rows_classification(server, fields, run):
    client, _ = server
    rows = [example(fields, run) for _ in range(3)]
    r = client.post("/predict", json={"run": run, "rows": rows})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["row"] for p in preds] == [1, 2, 3]
    for p in preds:
        assert 0 <= p["p_yes"] <= 1 and p["prediction"] == ("Yes" if p["p_yes"] >= 0.5 else "No")
        assert p["statement"] == preds[0]["statement"] and p["p_yes"] == pytest.approx(preds[0]["p_yes"])


def test_concurrent_requests_on_one_model(server, fields):
    """Eight clients at once on the torch model: all answered, all the same (lock held)."""
    client, _ = server
    body = {"run": SFT_RUN, "fields": example(fields, SFT_RUN)}
    with ThreadPoolExecutor(8) as pool:
        res = list(pool.map(lambda _: client.post("/predict", json=body), range(8)))
    assert [r.status_code for r in res] == [200] * 8
    ps = {round(r.json()["predictions"][0]["p_yes"], 6) for r in res}
    assert len(ps) == 1


@pytest.mark.parametrize("make,status,field,row,words", [
    (lambda ex: {"run": "vascular-gbdt", "rows": [{**ex, "age": "old"}]}, 422, "age", 1,
     "not a number"),
    (lambda ex: {"run": "vascular-gbdt", "fields": {**ex, "shoe_size": 44}}, 422, "shoe_size", 1,
     "unknown field"),
    (lambda ex: {"run": "vascular-gbdt", "rows": [7, {**ex, "age": -4}]}, 422, None, 1, "object"),
    (lambda ex: {"run": "nope", "fields": ex}, 404, "run", None, "not loaded"),
    (lambda ex: {"fields": ex}, 400, "run", None, "run"),
    (lambda ex: {"run": "vascular-gbdt", "rows": []}, 400, "rows", None, "empty"),
    (lambda ex: {"run": "vascular-gbdt", "rows": [ex] * (MAX_ROWS + 1)}, 413, "rows", None,
     f"at most {MAX_ROWS}"),
    (lambda ex: {"run": "vascular-gbdt", "rows": ex}, 400, "rows", None, "list"),
    (lambda ex: {"run": "vascular-gbdt", "rows": [ex], "fields": ex}, 400, None, None, "either"),
    (lambda ex: {"run": "vascular-gbdt", "fields": ex, "rnu": 1}, 400, "rnu", None, "unknown key"),
    (lambda ex: [ex], 400, None, None, "JSON object"),
])
def test_bad_requests_get_clear_json_errors(server, fields, make, status, field, row, words):
    client, _ = server
    r = client.post("/predict", json=make(example(fields, "vascular-gbdt")))
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and err["row"] == row
    assert words in err["error"]


def test_not_json_and_unknown_paths(server):
    client, _ = server
    r = client.post("/predict", content=b"run=vascular-gbdt&age=3",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_page_is_self_contained(server):
    client, _ = server
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "api/runs" in html and "predict" in html
    # nothing fetched from outside: no URL with a host, no external src/href, no @import
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html) and "@import" not in html
