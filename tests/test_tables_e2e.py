"""End to end, issue 28: any clinical table through every method in the real `dvc repro`.

A project of its own (the built-in tasks' is tests/test_pipeline_e2e.py; the two build in
parallel under pytest-xdist): the two scikit-learn tables through sft, head, gbdt and the
stack, and a synthetic three-label table (a heart rhythm, tests/conftest.py) through sft,
gbdt and the stack, each declared as a user would -- a params block, no code. The built-in
tasks stay at a few rows with no run (their data stages are in every project: the render
stage reads the vascular cohort). LLM runs train and predict on the 2-layer ``tiny_llama``
base. Then `clinlm predict` and `clinlm ask` answer the tables' runs.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import copy_checkout, on_tiny_base, rhythm_frame, rhythm_task
from tests.test_pipeline_e2e import run, sh

pytestmark = pytest.mark.slow


#: issue 28 in the same project: a params block each, no code; every LLM method on each
#: scikit-learn table, and the stack of the first with gbdt (whose runs are in params.yaml);
#: a multiclass table through sft and its stack. Column selection by pattern:
#: tests/table/test_table.py.
TABLE_RUNS = {"breast_cancer": [("sft", "smollm2-sft"), ("head", "smollm2-head")],
              "diabetes": [("head", "smollm2-head"), ("sft", "smollm2-sft")],
              "rhythm": [("sft", "smollm2-sft")]}


def add_table_runs(params: dict, dst: Path) -> None:
    """The scikit-learn tables' LLM and stack runs (their gbdt runs are in params.yaml), and
    a synthetic multiclass table (a heart rhythm of three labels; tests/conftest.py) declared
    as a user would: its file, a params block, its runs."""
    rhythm_frame(150).to_csv(dst / "rhythm.csv", index=False)
    task = rhythm_task("rhythm.csv")
    params["tasks"]["rhythm"] = {**task, "statements": {}, "split": {}, "format": {}}
    params["runs"]["gbdt"]["rhythm-gbdt"] = {"task": "rhythm", "model": "gbdt"}
    runs = params["runs"]
    for task, llms in TABLE_RUNS.items():
        for method, model in llms:
            runs[method][f"{task}-{method}"] = {"task": task, "model": model,
                                                "base": "smollm2-135m-instruct"}  # on_tiny_base
        runs["stack"][f"{task}-stack"] = {"task": task, "model": "stack", "llm": llms[0][1],
                                          "baseline": "gbdt"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llama) -> Path:
    dst = tmp_path_factory.mktemp("tables_e2e") / "repo"
    copy_checkout(dst, skip=("dvc.lock", "metrics"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=60)
    params["tasks"]["vascular_age"]["download"].update(source="synthetic", n_synthetic=40)
    params["tasks"]["vascular_age"]["images"].update(width_px=96, height_px=64)
    params["vlm_bases"] = {}
    params["runs"] = {method: {name: r for name, r in (runs or {}).items()
                               if r["task"] not in ("noshow", "vascular_age")}
                      for method, runs in params["runs"].items()}
    for name in ("smollm2-sft", "smollm2-head"):
        m = params["models"][name]
        m["max_train_rows"] = 8
        m["training"].update(num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1)
    params["models"]["stack"].update(n_holdout=60, n_boot=200)
    add_table_runs(params, dst)
    on_tiny_base(params, tiny_llama, keep_embedded=False)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "e2e"], dst)
    sh(["dvc", "repro"], dst)
    return dst


def test_table_tasks_every_method_scored(repo):
    for task, metric in (("breast_cancer", "roc_auc"), ("diabetes", "mae")):
        split = json.loads((repo / f"data/processed/{task}/split.json").read_text())
        for model in ("smollm2-sft", "smollm2-head", "gbdt", "stack"):
            m = json.loads((repo / f"metrics/{task}/{model}.json").read_text())
            assert m["n_test"] == split["n_test"] and m["n_failed"] == 0, (task, model)
            assert np.isfinite(m[metric]), (task, model)
            pred = pd.read_csv(repo / f"data/predictions/{task}/{model}.csv")
            test = pd.read_parquet(repo / f"data/processed/{task}/test.parquet")
            assert pred["id"].astype(str).tolist() == test["id"].tolist()  # every row, in order
            if task == "diabetes":  # every answer inside the declared range
                assert pred["y_pred"].between(25, 346).all(), model
    gbdt = json.loads((repo / "metrics/breast_cancer/gbdt.json").read_text())
    assert gbdt["roc_auc"] > 0.95  # the real table is easy for trees
    summary = (repo / "reports/summary.md").read_text()
    assert "## breast_cancer" in summary and "## diabetes" in summary


def test_multiclass_table_every_method_scored(repo):
    """The rhythm table (three labels, declared texts): every run answers every test row in
    order with one probability per label; multiclass metrics, intervals and the stack's pool."""
    test = pd.read_parquet(repo / "data/processed/rhythm/test.parquet")
    labels = ["SR", "AF", "AFL"]
    for model in ("smollm2-sft", "gbdt", "stack"):
        m = json.loads((repo / f"metrics/rhythm/{model}.json").read_text())
        assert m["n_test"] == len(test) and m["n_failed"] == 0, model
        assert m["n_classes"] == 3 and 0 <= m["accuracy"] <= 1 and m["log_loss"] > 0, model
        assert set(m["confusion_matrix"]) == set(labels)
        pred = pd.read_csv(repo / f"data/predictions/rhythm/{model}.csv", dtype={"id": str})
        assert pred["id"].tolist() == test["id"].tolist()  # every row, in order
        probs = pred[[f"p_{c}" for c in labels]].to_numpy(float)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        assert set(pred["y_pred"]) <= set(labels)
        assert (repo / f"metrics/rhythm/plots/{model}/confusion.json").exists()
    assert json.loads((repo / "metrics/rhythm/gbdt.json").read_text())["accuracy"] > 0.7
    summary = json.loads((repo / "reports/summary.json").read_text())["rhythm"]
    assert set(summary["stack"]["ci95"]) == {"accuracy", "macro_roc_auc", "log_loss"}
    assert summary["stack"]["vs_baseline"]["log_loss"]["verdict"] in (
        "better", "worse", "no difference")
    info = json.loads((repo / "metrics/rhythm/train/stack/train_info.json").read_text())
    assert info["stack"]["combiner"]["inputs"] == "standardised centred log-probabilities"
    assert "## rhythm (multiclass" in (repo / "reports/summary.md").read_text()


def test_predict_and_ask_a_table_run(repo, tmp_path):
    from clinlm.table.task import sklearn_frame
    rows = sklearn_frame("breast_cancer").drop(columns=["target"]).head(3).astype(object)
    rows.loc[1, "mean radius"] = "big"
    rows.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "out.csv"
    r = run(["-m", "clinlm", "predict", "--run", "breast_cancer-gbdt", "--input",
             str(tmp_path / "new.csv"), "--output", str(out)], repo)
    assert out.exists(), r.stderr[-2000:]
    partial = rows.drop(columns=["worst area"])
    partial.to_csv(tmp_path / "partial.csv", index=False)
    r = run(["-m", "clinlm", "predict", "--run", "breast_cancer-gbdt", "--input",
             str(tmp_path / "partial.csv"), "--output", str(tmp_path / "p.csv")], repo)
    assert r.returncode == 2 and "missing column(s) ['worst area']" in r.stderr
    got = pd.read_csv(out)
    assert got["status"].tolist() == ["ok", "refused", "ok"]
    assert got["p_yes"].notna().tolist() == [True, False, True]
    assert got.loc[1, "field"] == "mean radius" and "not a number" in got.loc[1, "error"]
    answer = json.loads(sh([sys.executable, "-m", "clinlm", "ask", "--run", "diabetes-head",
                            "--format", "json", "--field", "age=50", "--field", "bmi=31",
                            "--field", "s6=99"], repo))
    assert 25 <= answer["prediction"] <= 346
    assert "Not recorded:" in answer["statement"]
    fields = sh([sys.executable, "-m", "clinlm", "ask", "--run", "diabetes-head", "--list-fields"],
                repo)
    assert "Body mass index" in fields
    answer = json.loads(sh([sys.executable, "-m", "clinlm", "ask", "--run", "rhythm-stack",
                            "--format", "json", "--field", "heart_rate=150", "--field",
                            "rr_sd_ms=25", "--field", "p_wave=absent"], repo))
    assert answer["prediction"] in ("SR", "AF", "AFL")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
    text = sh([sys.executable, "-m", "clinlm", "ask", "--run", "rhythm-sft", "--field",
               "heart_rate=80", "--field", "age=60"], repo)
    assert "answer:" in text and "the most probable label is the answer" in text
