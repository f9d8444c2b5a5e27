"""Metrics and plot data from a predictions CSV. Never imports a model.

Classification CSV: ``id, y_true, p_yes, y_pred`` (labels ``Yes``/``No``).
Regression CSV: ``id, y_true, y_pred, y_lo, y_hi``.
Rows a method could not score (NaN ``p_yes`` / ``y_pred``) are counted as ``n_failed``
and left out of the metrics, never silently dropped.

Wall-clock and memory figures (seconds, rates, peak memory) are no metrics: they change on every rerun of the same code
and data. ``split_timing`` takes them out of a method's train info; the train / predict stages
write them to ``timing_path`` (``metrics/<task>/timing/{train,predict}/<model>.json``, DVC outs
with ``cache: false``), so neither a cached model folder nor ``dvc metrics diff`` sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

MAX_CURVE_POINTS = 200  # plots stay small enough to commit
TIMING_PHASES = ("train", "predict")


def is_timing_key(key: str) -> bool:
    """A figure of the machine, not of the model: ``seconds``, ``*_seconds``, ``*_per_second``
    (``train_seconds``, ``tokens_per_second``, ...) and ``peak_memory_gib`` (per process)."""
    return key in ("seconds", "peak_memory_gib") or key.endswith(("_seconds", "_per_second"))


def split_timing(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(info without its timing keys, the timing keys)``, both in ``info``'s order."""
    rest = {k: v for k, v in info.items() if not is_timing_key(k)}
    timing = {k: v for k, v in info.items() if is_timing_key(k)}
    return rest, timing


def timing_path(task: str, phase: str, model: str, root: str | Path = ".") -> Path:
    """``metrics/<task>/timing/<phase>/<model>.json``: the wall-clock times of one stage run."""
    if phase not in TIMING_PHASES:
        raise ValueError(f"timing phase {phase!r}: expected one of {TIMING_PHASES}")
    return Path(root) / "metrics" / task / "timing" / phase / f"{model}.json"


def _thin(df: pd.DataFrame) -> pd.DataFrame:
    if len(df) <= MAX_CURVE_POINTS:
        return df
    idx = np.unique(np.linspace(0, len(df) - 1, MAX_CURVE_POINTS).round().astype(int))
    return df.iloc[idx].reset_index(drop=True)


def classification_metrics(pred: pd.DataFrame) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """ROC-AUC, PR-AUC, accuracy, F1/recall/precision for ``Yes``, Brier, confusion matrix.

    Returns (metrics, plots) where plots holds ``roc``, ``pr`` and ``calibration`` tables.
    """
    ok = pred["p_yes"].notna()
    p = pred.loc[ok, "p_yes"].to_numpy(float)
    y = pred.loc[ok, "y_true"].eq("Yes").to_numpy()
    yhat = pred.loc[ok, "y_pred"].eq("Yes").to_numpy()
    tn, fp, fn, tp = skm.confusion_matrix(y, yhat, labels=[False, True]).ravel()
    both = len(np.unique(y)) == 2
    m = {
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float(skm.accuracy_score(y, yhat)),
        "f1": float(skm.f1_score(y, yhat, zero_division=0)),
        "recall": float(skm.recall_score(y, yhat, zero_division=0)),
        "precision": float(skm.precision_score(y, yhat, zero_division=0)),
        "brier": float(skm.brier_score_loss(y, p)),
        "prevalence": float(y.mean()),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "n_test": int(len(pred)),
        "n_failed": int((~ok).sum()),
    }
    plots: dict[str, pd.DataFrame] = {}
    if both:
        fpr, tpr, _ = skm.roc_curve(y, p)
        plots["roc"] = _thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}))
        prec, rec, _ = skm.precision_recall_curve(y, p)
        plots["pr"] = _thin(pd.DataFrame({"recall": rec[::-1], "precision": prec[::-1]}))
    bins = np.clip((p * 10).astype(int), 0, 9)
    cal = pd.DataFrame({"bin": bins, "p": p, "y": y}).groupby("bin").agg(
        mean_predicted=("p", "mean"), fraction_positive=("y", "mean"), n=("y", "size"))
    plots["calibration"] = cal.reset_index(drop=True)
    return m, plots


def regression_metrics(pred: pd.DataFrame, train_mean: float | None = None
                       ) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """MAE, RMSE, R², Pearson r, bias, share within ±5 years, 90 % interval coverage.

    ``train_mean`` (mean of the training targets) gives ``mean_predictor_mae``: the MAE of
    always predicting it on these same test rows. Plots: ``scatter`` (true vs predicted)
    and ``bland_altman`` (mean vs difference).
    """
    ok = pred["y_pred"].notna()
    y = pred.loc[ok, "y_true"].to_numpy(float)
    yhat = pred.loc[ok, "y_pred"].to_numpy(float)
    err = yhat - y
    m: dict[str, Any] = {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "r2": float(skm.r2_score(y, yhat)) if len(y) > 1 else float("nan"),
        "pearson_r": float(np.corrcoef(y, yhat)[0, 1]) if len(y) > 1 and yhat.std() > 0 else 0.0,
        "bias": float(np.mean(err)),
        "within_5y": float(np.mean(np.abs(err) <= 5)),
        "n_test": int(len(pred)),
        "n_failed": int((~ok).sum()),
    }
    if {"y_lo", "y_hi"} <= set(pred.columns) and pred.loc[ok, "y_lo"].notna().all():
        lo, hi = pred.loc[ok, "y_lo"].to_numpy(float), pred.loc[ok, "y_hi"].to_numpy(float)
        m["coverage_90"] = float(np.mean((y >= lo) & (y <= hi)))
        m["interval_width_90"] = float(np.mean(hi - lo))
    else:
        m["coverage_90"] = float("nan")
    if train_mean is not None:
        m["mean_predictor_mae"] = float(np.mean(np.abs(y - train_mean)))
    scatter = pd.DataFrame({"y_true": y, "y_pred": yhat})
    ba = pd.DataFrame({"mean": (y + yhat) / 2, "difference": err})
    return m, {"scatter": scatter, "bland_altman": ba}
