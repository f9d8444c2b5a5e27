"""The one evaluator: classification and regression metrics from a predictions table."""

import json
import math
import runpy
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from clinlm.metrics import (
    classification_metrics,
    is_timing_key,
    regression_metrics,
    split_timing,
    timing_path,
)
from tests.conftest import ROOT


def test_classification_perfect_and_random():
    y = np.array(["Yes"] * 20 + ["No"] * 80)
    p = np.r_[np.full(20, 0.9), np.full(80, 0.1)]
    pred = pd.DataFrame({"id": range(100), "y_true": y, "p_yes": p,
                         "y_pred": np.where(p >= 0.5, "Yes", "No")})
    m, plots = classification_metrics(pred)
    assert m["roc_auc"] == 1.0 and m["accuracy"] == 1.0 and m["recall"] == 1.0
    assert math.isclose(m["brier"], 0.01)
    assert m["confusion_matrix"] == {"tn": 80, "fp": 0, "fn": 0, "tp": 20}
    assert {"roc", "pr", "calibration"} <= set(plots)
    rng = np.random.default_rng(0)
    pred["p_yes"] = rng.random(100)
    assert 0.3 < classification_metrics(pred)[0]["roc_auc"] < 0.7


def test_failed_rows_are_counted_not_scored():
    pred = pd.DataFrame({"id": range(4), "y_true": ["Yes", "No", "Yes", "No"],
                         "p_yes": [0.9, 0.1, np.nan, 0.2], "y_pred": ["Yes", "No", None, "No"]})
    m, _ = classification_metrics(pred)
    assert m["n_failed"] == 1 and m["n_test"] == 4 and m["roc_auc"] == 1.0


def test_regression_metrics():
    y = np.arange(20, 80, dtype=float)
    pred = pd.DataFrame({"id": range(len(y)), "y_true": y, "y_pred": y + 2,
                         "y_lo": y - 1, "y_hi": y + 3})
    m, plots = regression_metrics(pred, train_mean=50.0)
    assert math.isclose(m["mae"], 2) and math.isclose(m["bias"], 2) and m["within_5y"] == 1
    assert m["coverage_90"] == 1.0 and math.isclose(m["pearson_r"], 1.0)
    assert math.isclose(m["mean_predictor_mae"], np.mean(np.abs(y - 50)))
    assert {"scatter", "bland_altman"} == set(plots)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    from clinlm.io import atomic_dir

    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("save failed")
    assert (out / "weights").read_text() == "v1"  # the old folder survives
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left


def test_split_timing_takes_out_every_wall_clock_figure():
    info = {"method": "sft", "n_train": 8, "train_seconds": 9.5, "tokens": 100,
            "tokens_per_second": 10.5, "seconds": 1.0, "train_loss": 0.5}
    rest, timing = split_timing(info)
    assert rest == {"method": "sft", "n_train": 8, "tokens": 100, "train_loss": 0.5}
    assert timing == {"train_seconds": 9.5, "tokens_per_second": 10.5, "seconds": 1.0}
    assert not is_timing_key("n_seconds_rows") and is_timing_key("rows_per_second")
    assert is_timing_key("peak_memory_gib")  # machine figures stay out of the model folder
    assert timing_path("noshow", "predict", "gbdt").as_posix() == "metrics/noshow/timing/predict/gbdt.json"
    with pytest.raises(ValueError, match="phase"):
        timing_path("noshow", "evaluate", "gbdt")


def _stage(monkeypatch, name: str, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [f"stages/{name}.py", *args])
    runpy.run_module(f"stages.{name}", run_name="__main__")


def test_timings_stay_out_of_cached_outputs_and_metrics(tmp_path, monkeypatch):
    """train -> predict -> evaluate -> compare (gbdt, in process): times go to the timing files
    only; a rerun with the same code and data leaves train_info.json and the metrics unchanged."""
    from clinlm.io import write_json, write_parquet
    from clinlm.noshow.statements import build_statements
    from clinlm.noshow.synthetic import generate_synthetic
    from clinlm.split import split_table

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"] = {"gbdt": {"noshow-gbdt": {"task": "noshow", "model": "gbdt"}}}  # compare reads every run
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    train, test = split_table(build_statements(generate_synthetic(400, seed=3)), 0.25, 42, True,
                              "classification")
    data = tmp_path / "data" / "processed" / "noshow"
    write_parquet(data / "train.parquet", train)
    write_parquet(data / "test.parquet", test)
    write_json(data / "split.json", {"data_source": "synthetic", "group_by_patient": True})
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    info_path = tmp_path / "data/models/noshow/gbdt/train_info.json"
    metrics = tmp_path / "metrics/noshow/gbdt.json"

    outputs = []
    for _ in range(2):
        _stage(monkeypatch, "train", "noshow-gbdt")
        _stage(monkeypatch, "predict", "noshow-gbdt")
        _stage(monkeypatch, "evaluate", "noshow-gbdt")
        outputs.append((info_path.read_bytes(), metrics.read_bytes(),
                        (tmp_path / "metrics/noshow/train/gbdt/train_info.json").read_bytes()))
    assert outputs[0] == outputs[1]  # nothing in them moves with the clock

    info, m = json.loads(outputs[0][0]), json.loads(outputs[0][1])
    assert info["n_train"] == len(train) and not [k for k in info if is_timing_key(k)]
    assert m["n_train"] == len(train) and not [k for k in m if is_timing_key(k)]
    t_train = json.loads(timing_path("noshow", "train", "gbdt").read_text())
    assert {"train_seconds", "stage_seconds"} <= set(t_train)
    assert all(is_timing_key(k) for k in t_train)
    t_pred = json.loads(timing_path("noshow", "predict", "gbdt").read_text())
    assert t_pred["rows"] == len(test) and t_pred["predict_seconds"] >= 0
    assert t_pred["rows_per_second"] is None or t_pred["rows_per_second"] > 0

    _stage(monkeypatch, "compare")
    summary = json.loads((tmp_path / "reports/summary.json").read_text())
    assert not [k for k in summary["noshow"]["gbdt"] if is_timing_key(k)]
    md = (tmp_path / "reports/summary.md").read_text()
    assert "| train s | predict s |" in md
    header = next(line for line in md.splitlines() if "| train s | predict s |" in line)
    row = next(line for line in md.splitlines() if line.startswith("| gbdt |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")],
                     strict=True))
    assert cells["train s"] == f"{t_train['train_seconds']:.3f}"
    assert cells["predict s"] == f"{t_pred['predict_seconds']:.3f}"


def test_atomic_writes_respect_the_umask(tmp_path):
    """mkstemp/mkdtemp make private files; outputs get the mode a plain open would give."""
    import os

    from clinlm.io import atomic_dir, write_json
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
