"""`python -m clinlm serve`: the real server process on 127.0.0.1, queried with httpx.

Models are loaded once at start (gbdt for both tasks, sft on the tiny random Llama, and a
stack of the two: counted across requests); every bad request -- the attack list included
(lone surrogates, 50k-deep JSON, wrong types, huge bodies) -- gets a 4xx JSON error naming
the row/field, a batch answers its good rows and refuses its bad ones in place, and the
server log stays free of tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_project import SFT_RUN, STACK_RUN, build_project, running_server

RUNS = ["vascular-gbdt", "noshow-gbdt", SFT_RUN]
MAX_ROWS = 8


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


# ---- no input reaches a 500 --------------------------------------------------------------

def _body(obj) -> bytes:
    """JSON text as a client sends it (``ensure_ascii``: a lone surrogate travels as the
    escape ``\\ud800``, which is valid JSON)."""
    return json.dumps(obj).encode()


def _deep(n: int) -> str:
    return "[" * n + "]" * n


#: (name, body from the example record, status, field, row, words in the error)
ATTACKS = [
    ("lone surrogate value", lambda ex: _body({"run": "vascular-gbdt",
                                                "fields": {**ex, "sex": "\ud800"}}),
     422, "sex", 1, "surrogate"),
    ("lone surrogate field name", lambda ex: _body({"run": "vascular-gbdt",
                                                    "fields": {**ex, "\ud800": 1}}),
     422, "\\ud800", 1, "not valid text"),
    ("lone surrogate run", lambda ex: _body({"run": "\ud800", "fields": ex}), 404, "run", None,
     "not loaded"),
    ("lone surrogate top-level key", lambda ex: _body({"run": "vascular-gbdt", "fields": ex,
                                                       "\udfff": 1}),
     400, "\\udfff", None, "unknown key"),
    ("50k-deep JSON", lambda ex: _deep(50_000).encode(), 400, None, None, "nested too deeply"),
    ("50k-deep field value", lambda ex: ('{"run": "vascular-gbdt", "fields": {"age": '
                                         + _deep(50_000) + "}}").encode(),
     400, None, None, "nested too deeply"),
    ("nested field value", lambda ex: _body({"run": "vascular-gbdt",
                                             "fields": {**ex, "age": [[[[1]]]]}}),
     422, "age", 1, "got a list"),
    ("object as value", lambda ex: _body({"run": "vascular-gbdt",
                                          "fields": {**ex, "age": {"years": 40}}}),
     422, "age", 1, "got an object"),
    ("boolean as a number", lambda ex: _body({"run": "vascular-gbdt",
                                              "fields": {**ex, "age": True}}),
     422, "age", 1, "not a number"),
    ("infinity", lambda ex: b'{"run": "vascular-gbdt", "fields": {"age": 1e999}}', 422, "age",
     1, "not a finite number"),
    ("NaN", lambda ex: b'{"run": "vascular-gbdt", "fields": {"age": NaN}}', 422, "age", 1,
     "not a finite number"),
    ("huge integer", lambda ex: _body({"run": "vascular-gbdt", "fields": {"age": 10 ** 30}}),
     422, "age", 1, "too large"),
    ("5000-digit integer", lambda ex: ('{"run": "vascular-gbdt", "fields": {"age": '
                                       + "9" * 5000 + "}}").encode(),
     400, None, None, "not JSON"),
    ("100k-character text", lambda ex: _body({"run": "vascular-gbdt",
                                              "fields": {**ex, "sex": "M" * 100_000}}),
     422, "sex", 1, "longer than"),
    ("NUL in text", lambda ex: _body({"run": "vascular-gbdt", "fields": {**ex, "sex": "M\0"}}),
     422, "sex", 1, "unknown sex"),
    ("fields null", lambda ex: _body({"run": "vascular-gbdt", "fields": None}), 422, None, 1,
     "object"),
    ("row is a list", lambda ex: _body({"run": "vascular-gbdt", "rows": [[ex]]}), 422, None, 1,
     "got a list"),
    ("rows a string", lambda ex: _body({"run": "vascular-gbdt", "rows": "abc"}), 400, "rows",
     None, "list"),
    ("run a list", lambda ex: _body({"run": ["vascular-gbdt"], "fields": ex}), 400, "run",
     None, "run"),
    ("body null", lambda ex: b"null", 400, None, None, "JSON object"),
    ("body empty", lambda ex: b"", 400, None, None, "not JSON"),
    ("body not UTF-8", lambda ex: b'\xff\xfe{"run": 1}', 400, None, None, "not JSON"),
    ("body over 1 MiB", lambda ex: _body({"run": "vascular-gbdt",
                                          "fields": {"sex": "M" * (1 << 20)}}),
     413, None, None, "over"),
]


@pytest.mark.parametrize("make,status,field,row,words", [a[1:] for a in ATTACKS],
                         ids=[a[0] for a in ATTACKS])
def test_attacks_get_a_4xx_naming_the_field(server, fields, make, status, field, row, words):
    client, _ = server
    r = client.post("/predict", content=make(example(fields, "vascular-gbdt")),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert (err["field"], err["row"]) == (field, row) and words in err["error"], err


def test_huge_streamed_body_is_cut_at_the_limit(server):
    """No Content-Length (chunked): the server stops reading past 1 MiB and answers 413."""
    client, _ = server
    sent = []

    def chunks():
        for _ in range(64):  # 64 MiB offered
            sent.append(1)
            yield b" " * (1 << 20)

    try:
        r = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    except httpx.TransportError:  # the server may close while we still send: not a 500
        return
    assert r.status_code == 413 and "over" in r.json()["error"]


def test_a_batch_answers_good_rows_and_refuses_bad_ones_in_place(server, fields):
    client, _ = server
    ex = example(fields, "vascular-gbdt")
    rows = [ex, {**ex, "age": "\ud800"}, {**ex, "age": [1]}, 7, {**ex, "age": "old"},
            {**ex, "shoe_size": 1}, {**ex, "age": 130}, {**ex, "age": 61}]
    r = client.post("/predict", content=_body({"run": "vascular-gbdt", "rows": rows}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["row"] for p in preds] == list(range(1, 9))
    assert [p["id"] for p in preds] == [str(i) for i in range(1, 9)]
    assert [p["status"] for p in preds] == ["ok"] + ["refused"] * 6 + ["ok"]
    assert [p.get("field") for p in preds[1:7]] == ["age", "age", None, "age", "shoe_size", "age"]
    assert "outside [0, 120]" in preds[6]["error"]
    assert "61-year-old" in preds[7]["statement"] and preds[7]["y_pred"] > 0


# ---- every served model loaded once ------------------------------------------------------

@contextlib.contextmanager
def serving_in_thread(app):
    """The app under uvicorn on 127.0.0.1 in this process (so loads can be counted)."""
    import threading
    import time

    import uvicorn

    from tests.conftest import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_stack_and_gbdt_loaded_once_across_requests(tmp_path_factory, tiny_llama, monkeypatch):
    """Each model is read from disk once per process, never per request: a stack's LLM member
    and gbdt included, and a gbdt run the server answers alone AND as the stack's baseline
    held once; 20 single-row requests to the stack are served at >= 1 per second."""
    import time
    from collections import Counter

    import clinlm.methods.gbdt as gbdt
    from clinlm.ask import Predictor
    from clinlm.llm.scorer import Scorer
    from clinlm.methods.stack import StackMethod
    from clinlm.serve import create_app

    project = build_project(tmp_path_factory, tiny_llama, stack=True)
    monkeypatch.chdir(project)
    loads: Counter = Counter()
    real_models, real_scorer = gbdt.load_models, Scorer.from_run.__func__

    def count_models(path):
        loads["gbdt"] += 1
        return real_models(path)

    def count_scorer(cls, *a, **kw):
        loads["sft"] += 1
        return real_scorer(cls, *a, **kw)

    monkeypatch.setattr(gbdt, "load_models", count_models)
    monkeypatch.setattr(Scorer, "from_run", classmethod(count_scorer))
    predictors = {r: Predictor(r) for r in ("noshow-gbdt", STACK_RUN)}
    # noshow-gbdt is also the stack's baseline: one copy in the process; and the sft member
    assert loads == {"gbdt": 1, "sft": 1}
    ex = {f["name"]: f["example"] for f in predictors[STACK_RUN].fields
          if f["example"] is not None}
    rows = [ex, {**ex, "Age": 70}, {**ex, "Age": -1}]
    with serving_in_thread(create_app(predictors)) as url, httpx.Client(base_url=url) as client:
        client.post("/predict", json={"run": STACK_RUN, "fields": ex}).raise_for_status()
        t0 = time.perf_counter()
        for i in range(20):
            r = client.post("/predict", json={"run": STACK_RUN, "fields": {**ex, "Age": 20 + i}})
            assert r.status_code == 200, r.text
        rate = 20 / (time.perf_counter() - t0)
        batch = client.post("/predict", json={"run": STACK_RUN, "rows": rows}).json()
        for _ in range(3):
            client.post("/predict", json={"run": "noshow-gbdt", "rows": rows}).raise_for_status()
    assert loads == {"gbdt": 1, "sft": 1}, "a request loaded a model again"
    assert rate >= 1.0, f"stack served at {rate:.2f} requests/s"
    # the loaded stack gives the numbers of the stack's own predict (which loads its members)
    p = predictors[STACK_RUN]
    table = p.table(rows[:2])
    want = StackMethod().predict(p.run, table)["p_yes"].to_numpy()
    got = [a["p_yes"] for a in batch["predictions"][:2]]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert batch["predictions"][2]["status"] == "refused"
