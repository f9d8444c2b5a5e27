"""Metrics and plot data from a predictions CSV. Never imports a model.

Classification CSV: ``id, y_true, p_yes, y_pred`` (labels ``Yes``/``No``).
Multiclass CSV: ``id, y_true, y_pred, p_<label>...`` (one probability column per class).
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


def prob_columns(labels: list[str]) -> list[str]:
    """A multiclass predictions table's probability columns, ``p_<label>`` in class order (the
    schema :func:`clinlm.methods.interface.class_probs` writes; the evaluator reads it here, without
    importing a method)."""
    return [f"p_{label}" for label in labels]


def labels_of(columns: Any) -> list[str]:
    """The classes of a multiclass predictions table, from its ``p_<label>`` columns."""
    return [str(c)[2:] for c in columns if str(c).startswith("p_")]


#: probabilities are clipped to [EPS, 1] before a log loss: a confident wrong answer costs
#: log(1 / EPS) ~ 34.5, not infinity
LOG_EPS = 1e-15


def multiclass_metrics(pred: pd.DataFrame) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC-AUC, log loss, each class's
    recall / precision / F1 / ROC-AUC and share, and the confusion matrix (``{true: {predicted:
    count}}``) of a multiclass predictions table (classes: its ``p_<label>`` columns).

    A class absent from the test rows has no ROC-AUC (NaN, left out of the macro mean, and
    counted as ``n_classes_without_auc``). Plots: ``confusion`` (one ``actual``, ``predicted``
    row per test row, dvc's confusion template).
    """
    labels = labels_of(pred.columns)
    probs = pred[prob_columns(labels)].to_numpy(float)
    ok = ~np.isnan(probs).any(axis=1)
    p = probs[ok]
    y = pred.loc[ok, "y_true"].astype(str).to_numpy()
    yhat = np.asarray(labels, dtype=object)[p.argmax(axis=1)] if len(p) else np.array([])
    idx = pd.Index(labels).get_indexer(y)
    if (idx < 0).any():
        raise ValueError(f"true label(s) {sorted(set(y[idx < 0]))} are not among the "
                         f"predicted classes {labels}")
    onehot = np.eye(len(labels), dtype=bool)[idx]
    per_class, aucs = {}, []
    for k, c in enumerate(labels):
        auc = (float(skm.roc_auc_score(onehot[:, k], p[:, k]))
               if 0 < onehot[:, k].sum() < len(y) else float("nan"))
        aucs.append(auc)
        per_class[c] = {
            "recall": float(skm.recall_score(y, yhat, labels=[c], average="macro",
                                             zero_division=0)),
            "precision": float(skm.precision_score(y, yhat, labels=[c], average="macro",
                                                   zero_division=0)),
            "f1": float(skm.f1_score(y, yhat, labels=[c], average="macro", zero_division=0)),
            "roc_auc": auc, "share": float(onehot[:, k].mean()) if len(y) else float("nan")}
    cm = skm.confusion_matrix(y, yhat, labels=labels) if len(y) else np.zeros((len(labels),) * 2)
    true_p = np.clip(p[np.arange(len(y)), idx], LOG_EPS, 1.0)
    m = {
        "accuracy": float(np.mean(y == yhat)) if len(y) else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, yhat)) if len(y) else float("nan"),
        "macro_f1": float(skm.f1_score(y, yhat, labels=labels, average="macro", zero_division=0)),
        "macro_roc_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "log_loss": float(-np.mean(np.log(true_p))) if len(y) else float("nan"),
        "n_classes": len(labels), "n_classes_without_auc": int(np.isnan(aucs).sum()),
        "per_class": per_class,
        "confusion_matrix": {t: {q: int(cm[i, j]) for j, q in enumerate(labels)}
                             for i, t in enumerate(labels)},
        "n_test": int(len(pred)),
        "n_failed": int((~ok).sum()),
    }
    return m, {"confusion": pd.DataFrame({"actual": y, "predicted": yhat})}


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
