"""What one answer is worth: base rate, test metric with its 95 % interval, the threshold.

A probability of 0.21 or an estimate of 61 years means little alone. Beside every answer the
page and ``ask`` show, for the run that gave it:

* the task's **base rate** from the training split (classification: the share of ``Yes``;
  multiclass: each label's share; regression: the mean and range of the target), so 0.21 can
  be read against the 0.198 of an average patient;
* the run's **test metric** with its 95 % bootstrap interval (ROC-AUC / accuracy / MAE) from
  ``reports/summary.json`` (stage ``compare``), else the bare value from
  ``metrics/<task>/<model>.json`` (stage ``evaluate``), else "not evaluated yet";
* what the **decision threshold** means (classification: "Yes when the predicted probability
  >= 0.5", and the share of test cases the run flagged, which says at once when a run never
  answers Yes), how often the most probable label was right, per label (multiclass), or how
  often the 90 % interval held the true value (regression);
* the **notice** that this is research software, not a medical device.

Computed once per loaded run (:func:`run_info`; ``Predictor.describe`` keeps it), from files
only: no model is touched. Every item says where it came from, and a missing file is said, not
guessed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NOTICE = ("Research use only, not a medical device: these answers are not validated for "
          "clinical decisions and must not replace a clinician's judgement.")
#: the one test metric shown per task type (the pipeline's headline metric in compare)
HEADLINE = {"classification": ("roc_auc", "ROC-AUC", 3), "regression": ("mae", "MAE", 2),
            "multiclass": ("accuracy", "accuracy", 3)}
SUMMARY = Path("reports") / "summary.json"


def summary_path(metrics_root: Path) -> Path:
    """``reports/summary.json`` beside a project's ``metrics`` folder (stage ``compare``)."""
    return Path(metrics_root).parent / SUMMARY


def _read(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is absent or unreadable (logged: never fatal)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("%s: not read (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def base_rate(run: Any) -> dict[str, Any]:
    """The target in the training split (``<data_dir>/train.parquet``), never the test rows.

    Classification: ``share_yes``; regression: ``mean``, ``min``, ``max``; both ``n_train``
    and ``text``.
    """
    import pandas as pd

    from clinlm.io import read_parquet

    path = Path(run.data_dir) / "train.parquet"
    try:
        label = read_parquet(path, columns=["label"])["label"]
    except (FileNotFoundError, OSError, KeyError, ValueError) as e:
        log.info("%s: no base rate (%s)", path, e)
        return {"text": f"unknown (no training split at {path})", "source": str(path)}
    out: dict[str, Any] = {"source": str(path), "n_train": len(label)}
    if run.task_type == "multiclass":
        shares = label.astype(str).value_counts(normalize=True)
        out.update(shares={k: float(v) for k, v in shares.items()},
                   text=", ".join(f"{k} {100 * v:.1f} %" for k, v in shares.items())
                   + f" of the {len(label)} training cases")
    elif run.task_type == "classification":
        share = float((label.astype(str) == "Yes").mean()) if len(label) else float("nan")
        out.update(share_yes=_finite(share),
                   text=f"{100 * share:.1f} % of the {len(label)} training cases were Yes"
                        + yes_means(run.task))
    else:
        y = pd.to_numeric(label, errors="coerce").dropna()
        out.update(mean=_finite(y.mean()), min=_finite(y.min()), max=_finite(y.max()),
                   text=f"training mean {y.mean():.1f}, range {y.min():.0f} to {y.max():.0f} "
                        f"({len(y)} training cases)")
    return out


def yes_means(task: str) -> str:
    """`` (Yes = <target> <positive label>, No = <the other>)`` for a table task, whose
    labels are the user's own (its download.json says which one is answered Yes); "" else."""
    from clinlm.paths import raw_dir

    target = _read(raw_dir(task) / "download.json").get("target") or {}
    if "positive_label" not in target:
        return ""
    return (f" (Yes = {target['column']} {target['positive_label']}, "
            f"No = {target['negative_label']})")


def headline_metric(run: Any, metrics_root: Path = Path("metrics")) -> dict[str, Any]:
    """The run's headline test metric: ``name``, ``label``, ``value``, ``ci95`` (or None),
    ``n_test``, ``source``, ``text``; ``value`` None and "not evaluated yet" when absent."""
    key, label, dec = HEADLINE[run.task_type]
    summary_file = summary_path(metrics_root)
    own_path = Path(metrics_root) / run.task / f"{run.model}.json"
    m = _read(summary_file).get(run.task, {}).get(run.model) or {}
    source = summary_file
    if _finite(m.get(key)) is None:
        m, source = _read(own_path), own_path
    value = _finite(m.get(key))
    if value is None:
        return {"name": key, "label": label, "value": None, "ci95": None, "n_test": None,
                "source": None, "text": f"test {label}: not evaluated yet ({own_path} missing)"}
    ci = (m.get("ci95") or {}).get(key)
    ci = [_finite(c) for c in ci] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    ci = ci if ci and None not in ci else None
    n = m.get("n_test")
    text = (f"test {label} {value:.{dec}f}"
            + (f" (95 % CI {ci[0]:.{dec}f} to {ci[1]:.{dec}f})" if ci else " (no interval)")
            + (f", {n} test cases" if n else ""))
    out = {"name": key, "label": label, "value": value, "ci95": ci, "n_test": n,
           "source": str(source), "text": text}
    if run.task_type == "regression" and _finite(m.get("mean_predictor_mae")) is not None:
        out["mean_predictor_mae"] = _finite(m["mean_predictor_mae"])
        out["text"] += (f"; answering the training mean for everyone gives MAE "
                        f"{out['mean_predictor_mae']:.{dec}f}")
    out["_metrics"] = m  # for decision(); dropped by run_info
    return out


def decision(run: Any, threshold: float, metric: dict[str, Any]) -> dict[str, Any]:
    """What the answer's decision means, with how it went on the test split.

    Classification: ``threshold``, ``flagged_share`` (test cases the run answered Yes, from the
    confusion matrix at the pipeline's ``predict.threshold``); regression: ``coverage_90``
    (test cases whose true value lay in the 90 % interval; None for a method with none).
    """
    m = metric.get("_metrics") or {}
    if run.task_type == "multiclass":
        rule = "the most probable label is the answer (no threshold)"
        per = m.get("per_class") or {}
        recall = {k: _finite(v.get("recall")) for k, v in per.items() if isinstance(v, dict)}
        if not recall:
            return {"threshold": None, "recall": None,
                    "text": f"{rule}; how often it was right: not evaluated yet"}
        text = rule + "; on the test split it was right for " + ", ".join(
            f"{100 * r:.0f} % of {k}" if r is not None else f"no {k}" for k, r in recall.items())
        return {"threshold": None, "recall": recall, "text": text}
    if run.task_type == "classification":
        cm = m.get("confusion_matrix") or {}
        n = sum(int(cm.get(k, 0)) for k in ("tn", "fp", "fn", "tp"))
        flagged = int(cm.get("tp", 0)) + int(cm.get("fp", 0))
        rule = f"Yes when the predicted probability ≥ {threshold:g}"
        if not n:
            return {"threshold": threshold, "flagged_share": None,
                    "text": f"{rule}; share of test cases flagged: not evaluated yet"}
        share = flagged / n
        text = f"{rule}; {100 * share:.1f} % of test cases were flagged ({flagged} of {n})"
        if flagged == 0:
            text += ": this run never answered Yes on the test split"
        return {"threshold": threshold, "flagged_share": share, "text": text}
    cov = _finite(m.get("coverage_90"))
    return {"threshold": None, "coverage_90": cov,
            "text": ("the 90 % interval: not evaluated yet" if not m else
                     "this method gives no interval" if cov is None else
                     f"the 90 % interval held the true value for {100 * cov:.1f} % of test "
                     "cases")}


def run_info(run: Any, threshold: float, metrics_root: Path = Path("metrics")) -> dict[str, Any]:
    """``notice``, ``base_rate``, ``metric``, ``decision`` of one run (JSON-able)."""
    metric = headline_metric(run, metrics_root)
    out = {"notice": NOTICE, "base_rate": base_rate(run), "metric": metric,
           "decision": decision(run, threshold, metric)}
    metric.pop("_metrics", None)
    return out
