"""The one evaluator: classification and regression metrics from a predictions table."""

import math

import numpy as np
import pandas as pd
import pytest

from clinlm.metrics import classification_metrics, regression_metrics


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
