"""Paired bootstrap intervals for test metrics. Never imports a model.

Every resample is a vector of row counts (a multinomial draw of n rows out of n), so a
statistic is a weighted statistic of the ORIGINAL rows: ROC-AUC and average precision are
computed from one sort of the scores and per-tie-group weight sums (vectorized over a block of
resamples, no Python loop over rows), MAE as a weighted mean. Paired: every model of a
comparison is scored on the same count vectors (the same resampled rows, matched by ``id``),
so the interval of a difference reflects only how the models disagree, not which rows were
drawn. Counts depend only on ``(n, seed, n_boot)``: a rerun gives the same intervals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

Statistic = Callable[[np.ndarray], np.ndarray]  # (b, n) row weights -> (b,) values
BLOCK = 100  # resamples per block: memory is BLOCK x n floats
HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "mae": False, "accuracy": True,
                    "macro_roc_auc": True, "log_loss": False}


def resample_weights(n: int, n_boot: int, seed: int, block: int = BLOCK) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap count vectors over ``n`` rows, yielded in blocks of ``(b, n)``."""
    if n < 1:
        raise ValueError("bootstrap needs at least one row")
    rng = np.random.default_rng(seed)
    p = np.full(n, 1.0 / n)
    for start in range(0, n_boot, block):
        yield rng.multinomial(n, p, size=min(block, n_boot - start)).astype(np.float64)


def _tie_groups(scores: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row order sorting ``scores`` and the start index of each run of tied scores in it."""
    order = np.argsort(-scores if descending else scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def weighted_roc_auc(scores: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of weights ``w`` (b, n): P(score_pos > score_neg) + ½ P(tie).

    Equals ``sklearn.metrics.roc_auc_score(y, scores, sample_weight=w[i])``; NaN where a
    resample holds only one class.
    """
    order, starts = _tie_groups(np.asarray(scores, float), descending=False)
    ys = np.asarray(y, bool)[order]
    ws = np.atleast_2d(w)[:, order]
    pos = np.add.reduceat(ws * ys, starts, axis=1)   # weight of positives per tie group
    neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg             # negatives strictly below each group
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def weighted_average_precision(scores: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (PR-AUC, sklearn's step definition) for each row of weights ``w``.

    Equals ``sklearn.metrics.average_precision_score(y, scores, sample_weight=w[i])``.
    """
    order, starts = _tie_groups(np.asarray(scores, float), descending=True)
    ys = np.asarray(y, bool)[order]
    ws = np.atleast_2d(w)[:, order]
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        total = pos.sum(axis=1)
        return np.where(total > 0, (pos * precision).sum(axis=1) / total, np.nan)


def weighted_mae(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean absolute error for each row of weights ``w`` (b, n)."""
    w = np.atleast_2d(w)
    return w @ np.abs(np.asarray(y_pred, float) - np.asarray(y_true, float)) / w.sum(axis=1)


def weighted_macro_roc_auc(probs: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The mean one-vs-rest ROC-AUC over classes for each row of weights ``w``: ``probs``
    ``(n, k)``, ``y`` the true class index per row. A class absent from a resample (or all
    of it) is left out of that resample's mean, as :func:`clinlm.metrics.multiclass_metrics`
    leaves out a class absent from the test rows."""
    per = np.stack([weighted_roc_auc(probs[:, k], y == k, w) for k in range(probs.shape[1])])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no class: NaN
        return np.nanmean(per, axis=0)


def weighted_accuracy(probs: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The share of rows whose most probable class is the true one, per row of weights."""
    w = np.atleast_2d(w)
    return w @ (probs.argmax(axis=1) == y).astype(float) / w.sum(axis=1)


def weighted_log_loss(probs: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The mean of -log P(true class) (clipped like :data:`clinlm.metrics.LOG_EPS`)."""
    from clinlm.metrics import LOG_EPS
    w = np.atleast_2d(w)
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], LOG_EPS, 1.0))
    return w @ loss / w.sum(axis=1)


def task_statistics(task_type: str, y_true: np.ndarray, pred: np.ndarray) -> dict[str, Statistic]:
    """The bootstrapped metrics of one model: ROC-AUC and PR-AUC of ``p_yes`` against
    ``y_true == "Yes"`` (classification), accuracy, macro ROC-AUC and log loss of the class
    probabilities ``pred`` ``(n, k)`` against ``y_true``, the true class index (multiclass),
    or MAE of ``y_pred`` (regression)."""
    if task_type == "multiclass":
        y = np.asarray(y_true, dtype=np.int64)
        return {"accuracy": lambda w: weighted_accuracy(pred, y, w),
                "macro_roc_auc": lambda w: weighted_macro_roc_auc(pred, y, w),
                "log_loss": lambda w: weighted_log_loss(pred, y, w)}
    if task_type == "classification":
        y = np.asarray(y_true) == "Yes"
        return {"roc_auc": lambda w: weighted_roc_auc(pred, y, w),
                "pr_auc": lambda w: weighted_average_precision(pred, y, w)}
    return {"mae": lambda w: weighted_mae(y_true, pred, w)}


def bootstrap(stats: Mapping[str, Statistic], n: int, n_boot: int = 1000,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Each statistic over the SAME ``n_boot`` resamples of the ``n`` rows: ``{name: (n_boot,)}``."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in stats}
    for w in resample_weights(n, n_boot, seed):
        for k, f in stats.items():
            out[k].append(f(w))
    return {k: np.concatenate(v) for k, v in out.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval of bootstrap values (NaN resamples skipped)."""
    a = (1 - level) / 2
    lo, hi = np.nanquantile(np.asarray(values, float), [a, 1 - a])
    return [float(lo), float(hi)]


def verdict(diff_interval: list[float], higher_is_better: bool) -> str:
    """"no difference" when the interval of (model - baseline) contains 0, else better/worse."""
    lo, hi = diff_interval
    if lo <= 0 <= hi:
        return "no difference"
    return "better" if (lo > 0) == higher_is_better else "worse"


def aligned(preds: Mapping[str, pd.DataFrame], column: str | list[str]
            ) -> tuple[pd.Index, dict[str, np.ndarray], np.ndarray]:
    """Every run's ``column`` (or columns: an ``(n, k)`` matrix each) on one common row order,
    matched by ``id``.

    ``preds``: run name -> predictions CSV table (``id``, ``y_true``, ``column``), in any row
    order. A run with a duplicated id, or whose ids differ from the first run's, is an error
    naming the run; rows any run could not score (NaN) are left out for all (paired).
    Returns (ids used, {run: values}, y_true).
    """
    names = list(preds)
    if not names:
        raise ValueError("no predictions to compare")
    wanted = [column] if isinstance(column, str) else list(column)
    tables = {}
    for name, df in preds.items():
        if not set(wanted) <= set(df.columns) or "id" not in df.columns:
            raise ValueError(f"{name}: predictions need columns id and {', '.join(wanted)}; "
                             f"got {list(df.columns)}")
        ids = df["id"].astype(str)
        dup = ids[ids.duplicated()]
        if len(dup):
            raise ValueError(f"{name}: duplicated id(s) in its predictions, e.g. {dup.iloc[0]!r}")
        tables[name] = df.assign(id=ids).set_index("id")
    ref = names[0]
    ref_ids = tables[ref].index
    for name in names[1:]:
        missing = ref_ids.difference(tables[name].index)
        extra = tables[name].index.difference(ref_ids)
        if len(missing) or len(extra):
            raise ValueError(
                f"{name}: its predictions do not cover the same test rows as {ref}: "
                f"{len(missing)} row(s) missing (e.g. {list(missing[:3])}), "
                f"{len(extra)} extra (e.g. {list(extra[:3])}); rerun its predict stage")
    ids = ref_ids.sort_values()
    values = {k: t.loc[ids, column].to_numpy(float) for k, t in tables.items()}
    ok = np.logical_and.reduce([~np.isnan(v).reshape(len(ids), -1).any(axis=1)
                                for v in values.values()])
    ids = ids[ok]
    return ids, {k: v[ok] for k, v in values.items()}, tables[ref].loc[ids, "y_true"].to_numpy()


def compare_runs(task_type: str, preds: Mapping[str, pd.DataFrame], baseline: str | None,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per run: ``ci95`` of its metrics and, against ``baseline``, the paired ``vs_baseline``
    difference (run - baseline) with its interval and verdict. Rows matched by ``id``.
    Multiclass: the classes are the first run's ``p_<label>`` columns; every run needs the
    same ones (an error naming the run otherwise)."""
    if task_type == "multiclass":
        from clinlm.metrics import labels_of, prob_columns
        first = next(iter(preds))
        labels = labels_of(preds[first].columns)
        for name, df in preds.items():
            if labels_of(df.columns) != labels:
                raise ValueError(f"{name}: classes {labels_of(df.columns)} differ from "
                                 f"{first}'s {labels}; rerun its train and predict stages")
        column: str | list[str] = prob_columns(labels)
    else:
        column = "p_yes" if task_type == "classification" else "y_pred"
    ids, values, y = aligned(preds, column)
    if task_type == "regression":
        y = y.astype(float)
    elif task_type == "multiclass":
        y = pd.Index(labels).get_indexer(y.astype(str))
        if (y < 0).any():
            raise ValueError(f"a true label is not among the classes {labels}")
    stats = {(run, metric): f for run, v in values.items()
             for metric, f in task_statistics(task_type, y, v).items()}
    ones = np.ones((1, len(ids)))
    point = {k: float(f(ones)[0]) for k, f in stats.items()}
    boot = bootstrap(stats, len(ids), n_boot, seed)
    out: dict[str, dict[str, Any]] = {}
    for run in values:
        metrics = [m for r, m in stats if r == run]
        res: dict[str, Any] = {"n_rows": int(len(ids)), "n_boot": n_boot,
                               "point": {m: point[run, m] for m in metrics},
                               "ci95": {m: percentile_interval(boot[run, m]) for m in metrics}}
        if baseline is not None and run != baseline:
            res["vs_baseline"] = {}
            for m in metrics:
                ci = percentile_interval(boot[run, m] - boot[baseline, m])
                res["vs_baseline"][m] = {"diff": point[run, m] - point[baseline, m], "ci95": ci,
                                         "verdict": verdict(ci, HIGHER_IS_BETTER[m])}
        out[run] = res
    return out
