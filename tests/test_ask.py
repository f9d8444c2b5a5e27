"""`python -m clinlm ask`: one case as fields -> answer, uncertainty, statement; clean errors.

Runs in a temporary project with trained runs (tests/serve_project.py): gbdt for both tasks,
and an sft run on the tiny random Llama through the real SFT scoring code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from clinlm.ask import AskError, Predictor, format_text, main
from clinlm.predict import shape_predictions
from tests.conftest import ROOT
from tests.serve_project import SFT_RUN, build_project


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_llama):
    return build_project(tmp_path_factory, tiny_llama)


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def example(run: str) -> dict:
    """The record made of every field's own example (the form's defaults)."""
    from clinlm.params import all_runs, load_params
    from clinlm.tasks import get_task
    params = load_params()
    task = all_runs(params)[run]["task"]
    fields = get_task(task).input_fields(params["tasks"][task])
    return {f["name"]: f["example"] for f in fields if f["example"] is not None}


def ask(*argv: str, capsys) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_regression_answer_with_interval(in_project, capsys):
    rec = example("vascular-gbdt")
    code, out, _ = ask("--run", "vascular-gbdt", "--json", json.dumps(rec), "--format", "json",
                       capsys=capsys)
    assert code == 0
    a = json.loads(out)
    assert a["run"] == "vascular-gbdt" and a["method"] == "gbdt" and a["task"] == "vascular_age"
    assert a["y_lo"] <= a["y_pred"] <= a["y_hi"] and 18 < a["y_pred"] < 110
    assert "ECG" in a["statement"]
    # --field overrides the JSON, and the answer follows the input
    code, text, _ = ask("--run", "vascular-gbdt", "--json", json.dumps(rec), "--field", "age=30",
                        capsys=capsys)
    assert code == 0 and "90 % interval" in text and "30-year-old" in text


@pytest.mark.parametrize("run", ["noshow-gbdt", SFT_RUN])
def test_classification_answer_with_probability(in_project, capsys, run):
    code, out, _ = ask("--run", run, "--json", json.dumps(example(run)), "--format", "json",
                       capsys=capsys)
    assert code == 0
    a = json.loads(out)
    assert 0 <= a["p_yes"] <= 1 and a["threshold"] == 0.5
    assert a["prediction"] == ("Yes" if a["p_yes"] >= 0.5 else "No")
    assert a["statement"]
    p = Predictor(run)  # the text form of the same answer
    text = format_text(p, p.predict([example(run)])[0])
    assert f"p_yes = {a['p_yes']:.3f}" in text and a["statement"] in text


@pytest.mark.parametrize("run", ["noshow-gbdt", "vascular-gbdt", SFT_RUN])
def test_loaded_model_scores_like_predict_table(in_project, run):
    """ask/serve keep the model loaded; their numbers equal clinlm.predict's on the same rows."""
    from clinlm.predict import predict_table

    p = Predictor(run)
    table = pd.read_parquet(in_project / "data" / "interim" / p.run.task / "table.parquet").head(6)
    got = shape_predictions(p.run, table, p._score(table), p.threshold)
    ref = predict_table(p.run, table, p.threshold)
    pd.testing.assert_frame_equal(got, ref[got.columns], check_exact=False, rtol=1e-5)
    assert got.notna().all().all() or p.run.task_type == "classification"


@pytest.mark.parametrize("argv,field", [
    (["--field", "no_such_field=1"], "no_such_field"),
    (["--field", "age=abc"], "age"),
    (["--field", "age"], "age"),                       # no '='
    (["--field", "age=40", "--field", "age=41"], "age"),
    (["--json", "[1, 2]"], "--json"),
    (["--json", "{not json"], "--json"),
])
def test_bad_input_names_the_field_exit_2(in_project, capsys, argv, field):
    code, out, err = ask("--run", "vascular-gbdt", *argv, "--format", "json", capsys=capsys)
    assert code == 2
    assert json.loads(out)["field"] == field
    assert field in err and "Traceback" not in err


def test_unknown_untrained_and_vlm_runs(in_project, capsys):
    code, _, err = ask("--run", "nope", capsys=capsys)
    assert code == 2 and "'nope'" in err and "noshow-gbdt" in err  # lists the known runs
    import yaml
    params = yaml.safe_load((in_project / "params.yaml").read_text())
    params["models"]["gbdt2"] = params["models"]["gbdt"]
    params["runs"]["gbdt"]["noshow-gbdt2"] = {"task": "noshow", "model": "gbdt2"}
    with pytest.raises(FileNotFoundError, match="not trained.*dvc repro train_gbdt@noshow-gbdt2"):
        Predictor("noshow-gbdt2", params=params)
    repo = yaml.safe_load((ROOT / "params.yaml").read_text())
    repo["runs"]["vlm"] = {"v": {"task": "vascular_age", "model": "smolvlm-ecg",
                                 "base": "smolvlm-ecg"}}
    with pytest.raises(AskError, match="vlm method reads an ECG image"):
        Predictor("v", params=repo)


def test_command_line_dispatch(in_project):
    """The real `python -m clinlm` process: usage, exit codes, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "clinlm"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "ask" in r.stdout and "serve" in r.stdout
    r = subprocess.run(cmd + ["frobnicate"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = subprocess.run(cmd + ["ask", "--run", "vascular-gbdt", "--field", "height_cm=tall"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "height_cm" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["ask", "--run", "vascular-gbdt", "--field", "age=61",
                              "--field", "sex=F"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "61-year-old woman" in r.stdout and "90 % interval" in r.stdout


def test_list_fields_loads_no_model(in_project, capsys, monkeypatch):
    """`--list-fields` only reads params: no model is loaded, no model library imported."""
    import clinlm.predictor

    def boom(*_a, **_k):
        raise AssertionError("--list-fields loaded the model")

    monkeypatch.setattr(clinlm.predictor, "_load_scorer", boom)
    monkeypatch.setattr("clinlm.runs.make_run", boom)  # which checks the model libraries
    code, out, _ = ask("--run", SFT_RUN, "--list-fields", "--format", "json", capsys=capsys)
    assert code == 0 and "Age" in [f["name"] for f in json.loads(out)]


def test_cli_prints_the_answer_only(in_project):
    """No library notice around the answer of an LLM run (warnings, loading bars)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    env.pop("TQDM_DISABLE", None)
    r = subprocess.run([sys.executable, "-m", "clinlm", "ask", "--run", SFT_RUN, "--json",
                        json.dumps(example(SFT_RUN))], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.startswith("run:")
