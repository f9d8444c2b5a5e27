"""What an answer is worth (clinlm/runinfo.py), and how ``ask`` says it.

The unit tests write a training split and metrics files in the pipeline's layout, in a
temporary folder, and check each item against them: the base rate from the training split
only, the test metric with its interval from summary.json, the fallback to the run's own
metrics file and "not evaluated yet", the threshold's meaning with the share flagged. The
last test runs ``python -m clinlm ask`` on a trained gbdt run (tests/serve_project.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from clinlm.runinfo import NOTICE, run_info


def make_run(root: Path, task_type: str, train_labels: list, test_labels: list | None = None):
    data = root / "data" / "processed" / "t"
    data.mkdir(parents=True)
    pd.DataFrame({"label": train_labels}).to_parquet(data / "train.parquet")
    if test_labels is not None:  # never read: a base rate is a training-split figure
        pd.DataFrame({"label": test_labels}).to_parquet(data / "test.parquet")
    return SimpleNamespace(task="t", model="m", task_type=task_type, data_dir=data)


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_classification_from_summary(tmp_path):
    run = make_run(tmp_path, "classification", ["Yes"] * 3 + ["No"] * 9, ["Yes"] * 10)
    cm = {"tn": 70, "fp": 6, "fn": 20, "tp": 4}
    write(tmp_path / "reports" / "summary.json", {"t": {"m": {
        "roc_auc": 0.6772, "ci95": {"roc_auc": [0.6171, 0.7354]}, "n_test": 100,
        "confusion_matrix": cm}}})
    info = run_info(run, 0.5, metrics_root=tmp_path / "metrics")
    assert info["notice"] == NOTICE and "not a medical device" in NOTICE
    assert info["base_rate"]["share_yes"] == 0.25
    assert info["base_rate"]["text"] == "25.0 % of the 12 training cases were Yes"
    assert info["metric"]["ci95"] == [0.6171, 0.7354]
    assert info["metric"]["text"] == "test ROC-AUC 0.677 (95 % CI 0.617 to 0.735), 100 test cases"
    assert info["decision"]["flagged_share"] == 0.1
    assert info["decision"]["text"] == ("Yes when the predicted probability ≥ 0.5; 10.0 % of "
                                        "test cases were flagged (10 of 100)")
    json.dumps(info)  # served as is by /api/runs


def test_classification_fallbacks(tmp_path):
    run = make_run(tmp_path, "classification", ["Yes", "No"])
    # only the run's own metrics file (evaluate ran, compare did not): no interval
    write(tmp_path / "metrics" / "t" / "m.json", {
        "roc_auc": 0.61, "n_test": 40, "confusion_matrix": {"tn": 31, "fp": 0, "fn": 9, "tp": 0}})
    info = run_info(run, 0.3, metrics_root=tmp_path / "metrics")
    assert info["metric"]["ci95"] is None
    assert info["metric"]["text"] == "test ROC-AUC 0.610 (no interval), 40 test cases"
    assert info["decision"]["text"].startswith("Yes when the predicted probability ≥ 0.3; "
                                               "0.0 % of test cases were flagged (0 of 40)")
    assert info["decision"]["text"].endswith("never answered Yes on the test split")
    # nothing at all
    (tmp_path / "metrics" / "t" / "m.json").unlink()
    (run.data_dir / "train.parquet").unlink()
    info = run_info(run, 0.5, metrics_root=tmp_path / "metrics")
    assert info["metric"]["value"] is None and "not evaluated yet" in info["metric"]["text"]
    assert "not evaluated yet" in info["decision"]["text"]
    assert info["base_rate"]["text"].startswith("unknown (no training split at")


def test_regression(tmp_path):
    run = make_run(tmp_path, "regression", [40.0, 50.0, 90.0], [100.0])
    write(tmp_path / "reports" / "summary.json", {"t": {"m": {
        "mae": 5.891, "ci95": {"mae": [5.2, 6.61]}, "n_test": 160, "coverage_90": 0.725,
        "mean_predictor_mae": 21.81}}})
    info = run_info(run, 0.5, metrics_root=tmp_path / "metrics")
    b = info["base_rate"]
    assert (b["mean"], b["min"], b["max"]) == (60.0, 40.0, 90.0)
    assert b["text"] == "training mean 60.0, range 40 to 90 (3 training cases)"
    assert info["metric"]["text"] == ("test MAE 5.89 (95 % CI 5.20 to 6.61), 160 test cases; "
                                      "answering the training mean for everyone gives MAE 21.81")
    assert info["decision"]["text"] == ("the 90 % interval held the true value for 72.5 % of "
                                        "test cases")
    write(tmp_path / "reports" / "summary.json", {"t": {"m": {"mae": 8.6, "coverage_90": None}}})
    info = run_info(run, 0.5, metrics_root=tmp_path / "metrics")
    assert info["decision"]["text"] == "this method gives no interval"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tests.serve_project import build_project
    return build_project(tmp_path_factory)


def test_ask_prints_labels_worth_and_notice(project, monkeypatch, capsys):
    from clinlm.ask import main
    monkeypatch.chdir(project)
    assert main(["--run", "noshow-gbdt", "--list-fields"]) == 0
    out = capsys.readouterr().out
    assert "Hipertension" in out and "Hypertension" in out and "Bolsa Familia welfare" in out
    rec = {"Gender": "F", "Age": 45, "ScheduledDay": "2016-04-25 09:00",
           "AppointmentDay": "2016-05-02", "Neighbourhood": "JARDIM CAMBURI"}
    assert main(["--run", "noshow-gbdt", "--json", json.dumps(rec)]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    # this project has no split and no metrics: each line says so instead of a figure
    assert lines["base rate"].strip().startswith("unknown (no training split at")
    assert "not evaluated yet" in lines["quality"]
    assert lines["decision"].strip().startswith("Yes when the predicted probability ≥ 0.5")
    assert lines["notice"].strip() == NOTICE
    assert "hypertension, diabetes and alcoholism not recorded" in lines["statement"]
