"""One row in, one row out, in place: `predict`, `ask` and `serve` answer every input row.

A 200-row no-show CSV with 5 bad rows (one of them a negative age, which the training data's
documented filter drops) goes through `python -m clinlm predict`, `POST /predict` on a real
server and `ask` (its Predictor and its command line): every path gives 200 answers in input
order, keyed by the caller's id and the row number, the same 5 refusals naming the column,
and for the other 195 rows the numbers the strict path gives on a file of only those rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.serve_project import build_project, running_server

RUN = "noshow-gbdt"
N = 200
#: 1-based row -> (column, bad value, words of the rule)
BAD = {17: ("Age", "-1", "negative Age"), 50: ("Age", "abc", "integer"),
       88: ("Gender", "X", "F or M"), 120: ("ScheduledDay", "yesterday", "unparseable date"),
       199: ("Handcap", "9", "0-4")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory)  # the gbdt runs: no torch in these tests


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """200 new appointments (no outcome column), 5 of them bad, as the text a CSV holds."""
    from clinlm.noshow.synthetic import generate_synthetic

    df = generate_synthetic(N, seed=5).drop(columns="No-show").astype(str)
    for row, (col, value, _) in BAD.items():
        df.loc[row - 1, col] = value
    return df


@pytest.fixture(scope="module")
def cli_answers(project, raw) -> pd.DataFrame:
    """`python -m clinlm predict` on the 200-row file, in a real process."""
    src, out = project / "bad200.csv", project / "answers200.csv"
    raw.to_csv(src, index=False)
    r = subprocess.run([sys.executable, "-m", "clinlm", "predict", "--run", RUN, "--input",
                        str(src), "--output", str(out)], cwd=project, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "200 rows, 195 answered, 5 refused" in r.stderr and "Traceback" not in r.stderr
    return pd.read_csv(out, dtype={"id": str})


def reference(project: Path, raw: pd.DataFrame) -> pd.Series:
    """p_yes of the 195 good rows through the strict path on a file holding only them."""
    from clinlm.ask import Predictor
    from clinlm.predict import predict_table

    good = project / "good195.csv"
    raw.drop(index=[r - 1 for r in BAD]).to_csv(good, index=False)
    with contextlib.chdir(project):
        p = Predictor(RUN)
        table = p.task.table_from_csv(p.run.task_cfg, good)
        return predict_table(p.run, table).set_index("id")["p_yes"]


def check_200(rows: list[dict], raw: pd.DataFrame, ref: pd.Series) -> None:
    """200 answers in input order, the caller's ids, 5 refusals naming the column."""
    assert len(rows) == N
    assert [r["row"] for r in rows] == list(range(1, N + 1))
    assert [str(r["id"]) for r in rows] == raw["AppointmentID"].tolist()
    refused = {r["row"]: r for r in rows if r["status"] == "refused"}
    assert set(refused) == set(BAD)
    for row, (col, value, words) in BAD.items():
        assert refused[row]["field"] == col
        assert refused[row]["error"].startswith(f"{col}: ") and words in refused[row]["error"]
        assert repr(value) in refused[row]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(0 <= r["p_yes"] <= 1 for r in ok)
    got = pd.Series({str(r["id"]): r["p_yes"] for r in ok})
    pd.testing.assert_series_equal(got.sort_index(), ref.sort_index(), check_names=False,
                                   rtol=1e-9)


def test_predict_cli_answers_every_row_in_place(project, raw, cli_answers):
    ans = cli_answers
    assert list(ans.columns[:2]) == ["row", "id"]
    assert {"p_yes", "y_pred", "status", "field", "error"} <= set(ans.columns)
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()}
            for r in ans.to_dict("records")]
    check_200(rows, raw, reference(project, raw))
    assert ans.loc[ans["status"] == "refused", "p_yes"].isna().all()


def test_ask_predictor_answers_every_row_in_place(project, raw, cli_answers, monkeypatch):
    from clinlm.ask import Predictor

    monkeypatch.chdir(project)
    rows = Predictor(RUN).predict(raw.to_dict("records"))
    check_200(rows, raw, reference(project, raw))
    assert [r["p_yes"] for r in rows if r["status"] == "ok"] == pytest.approx(
        cli_answers.loc[cli_answers["status"] == "ok", "p_yes"].tolist(), rel=1e-12)


def test_ask_cli_refuses_a_bad_row_and_answers_a_good_one(project, raw, monkeypatch, capsys):
    from clinlm.ask import main

    monkeypatch.chdir(project)
    for row, (col, _, words) in BAD.items():
        code = main(["--run", RUN, "--json", json.dumps(raw.iloc[row - 1].to_dict()),
                     "--format", "json"])
        out, err = capsys.readouterr()
        assert code == 2 and json.loads(out)["field"] == col
        assert words in err and "Traceback" not in err
    assert main(["--run", RUN, "--json", json.dumps(raw.iloc[0].to_dict())]) == 0
    assert "p_yes" in capsys.readouterr().out


def test_serve_answers_every_row_in_place(project, raw, cli_answers):
    with running_server(project, [RUN]) as (url, log):
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/predict", json={"run": RUN, "rows": raw.to_dict("records")})
            assert r.status_code == 200, r.text
            rows = r.json()["predictions"]
            # one refused row alone: 422 naming it (never a 500), the per-row list as well
            alone = client.post("/predict", json={"run": RUN, "fields": raw.iloc[16].to_dict()})
        assert "Traceback" not in log.read_text()
    check_200(rows, raw, reference(project, raw))
    assert [r["p_yes"] for r in rows if r["status"] == "ok"] == pytest.approx(
        cli_answers.loc[cli_answers["status"] == "ok", "p_yes"].tolist(), rel=1e-12)
    assert all(r["statement"] for r in rows if r["status"] == "ok")
    assert alone.status_code == 422
    body = alone.json()
    assert (body["row"], body["field"]) == (1, "Age") and "negative Age" in body["error"]
    assert body["predictions"][0]["status"] == "refused"


def test_predict_cli_user_errors_exit_2_without_traceback(project, raw, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "clinlm", "predict", *argv], cwd=project,
                              capture_output=True, text=True, env=env)

    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m clinlm predict")
    assert "--input" in r.stdout and "status" in r.stdout
    out = str(tmp_path / "o.csv")
    missing_col = tmp_path / "nocol.csv"
    raw.drop(columns="Gender").to_csv(missing_col, index=False)
    all_bad = tmp_path / "allbad.csv"
    raw.head(3).assign(Age="-2").to_csv(all_bad, index=False)
    cases = [
        (["--run", RUN, "--input", str(tmp_path / "nope.csv"), "--output", out], "nope.csv"),
        (["--run", "nope", "--input", str(missing_col), "--output", out], "no run 'nope'"),
        (["--run", RUN, "--input", str(missing_col), "--output", out], "'Gender'"),
        (["--run", RUN, "--input", str(all_bad), "--output", out], "3 refused"),
        (["--run", RUN], "usage: python -m clinlm predict"),
    ]
    for argv, words in cases:
        r = run(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    # every row refused: the file is still written, one line per row
    assert pd.read_csv(out)["status"].tolist() == ["refused"] * 3
