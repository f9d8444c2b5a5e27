"""Validation while training: a seeded slice of the TRAINING split, scored like the test set.

``models.<m>.validation.rows`` holds rows out of the training split (never the test split),
drawn with the project seed and grouped like the split itself (:func:`clinlm.split.split_table`:
a patient's rows stay on one side, classes / target quintiles stratified). The remaining rows
are then subsampled to ``max_train_rows`` as without validation (:func:`train_rows`), so the
slice's size does not depend on ``max_train_rows``.

While training, the Trainer evaluates at ``training.eval_strategy`` / ``eval_steps``:
``eval_loss`` is the training loss on the slice (the same ``loss_fn``), and the metrics come
from the method's own prediction code on the model being trained (``Method.validation_scorer``):
the very answer-position logits the predict stage reads (sft: Yes/No at the last prompt
token, or the exact digit-by-digit distribution over integer answers; head: the head's
outputs; vlm: the numeric decoding with the image). So ``eval_roc_auc`` / ``eval_accuracy``
(classification) and ``eval_mae`` (regression) mean what the test metrics mean. Numeric answers
need several decoding steps on a KV cache, which the Trainer's batch-of-labels evaluation loop
cannot give; one code path for every method is also one definition of each metric.

``metric_for_best_model``, ``load_best_model_at_end`` and early stopping
(``validation.early_stopping_patience``) read these metrics; without a slice every evaluation
key is an error naming it (:func:`check_evaluation_keys`), never silently ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

CLASSIFICATION_METRICS = ("loss", "roc_auc", "accuracy")
MULTICLASS_METRICS = ("loss", "accuracy", "macro_roc_auc", "log_loss")
REGRESSION_METRICS = ("loss", "mae")
LOWER_IS_BETTER = ("loss", "mae", "log_loss")
#: the validation metrics each task type computes
METRICS = {"classification": CLASSIFICATION_METRICS, "multiclass": MULTICLASS_METRICS,
           "regression": REGRESSION_METRICS}

# TrainingArguments fields that only mean something with an evaluation set (besides every
# `eval_*` field); a value other than the library's default needs `validation.rows`
EVALUATION_KEYS = ("load_best_model_at_end", "metric_for_best_model", "greater_is_better",
                   "per_device_eval_batch_size", "prediction_loss_only", "batch_eval_metrics",
                   "include_for_metrics")


def has_validation(cfg: dict[str, Any]) -> bool:
    """Whether the model entry holds a validation slice out of training."""
    return bool((cfg.get("validation") or {}).get("rows"))


def _defaults(section: str) -> dict[str, Any]:
    """The library defaults of ``training`` (TrainingArguments) or ``sft`` (trl.SFTConfig)."""
    import dataclasses
    if section == "sft":
        from trl import SFTConfig as cls
    else:
        from transformers import TrainingArguments as cls
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def check_evaluation_keys(cfg: dict[str, Any], where: str) -> None:
    """Errors naming the key: evaluation settings without a validation slice, a slice that is
    never evaluated (``eval_strategy: no``), early stopping without a metric to watch, and a
    ``metric_for_best_model`` the run does not compute. ``where``: ``models.<m>``."""
    training = cfg.get("training") or {}
    validation = cfg.get("validation") or {}
    if not has_validation(cfg):
        for section in ("training", "sft"):
            keys = {k: v for k, v in (cfg.get(section) or {}).items()
                    if k.startswith("eval_") or k in EVALUATION_KEYS}
            defaults = _defaults(section) if keys else {}
            for key, value in keys.items():
                if str(value) != str(defaults.get(key, object())):
                    raise ValueError(f"{where}.{section}.{key}: evaluation needs a validation "
                                     f"slice; set {where}.validation.rows (rows or a share of "
                                     f"the training split), or remove the key")
        if str(training.get("save_strategy")) == "best":
            raise ValueError(f"{where}.training.save_strategy: best needs a validation slice; "
                             f"set {where}.validation.rows")
        if validation.get("early_stopping_patience"):
            raise ValueError(f"{where}.validation.early_stopping_patience: early stopping needs "
                             f"a validation slice; set {where}.validation.rows")
        return
    if str(training.get("eval_strategy", "steps")) == "no":
        raise ValueError(f"{where}.training.eval_strategy: no, but validation.rows holds rows out "
                         f"of training; use steps or epoch, or set {where}.validation.rows: null")
    metric = training.get("metric_for_best_model")
    if metric is not None:
        name = str(metric).removeprefix("eval_")
        known = CLASSIFICATION_METRICS + MULTICLASS_METRICS + REGRESSION_METRICS
        if name not in known:
            raise ValueError(f"{where}.training.metric_for_best_model: {metric!r} is not a "
                             f"validation metric; use one of {', '.join(dict.fromkeys(known))} "
                             f"(classification: roc_auc, accuracy; multiclass: accuracy, "
                             f"macro_roc_auc, log_loss; regression: mae)")
    if validation.get("early_stopping_patience"):
        if metric is None:
            raise ValueError(f"{where}.validation.early_stopping_patience: set "
                             f"{where}.training.metric_for_best_model (e.g. loss, roc_auc, mae)")
        if not training.get("load_best_model_at_end"):
            raise ValueError(f"{where}.validation.early_stopping_patience: set "
                             f"{where}.training.load_best_model_at_end: true (the stopped run "
                             f"keeps its best checkpoint, not its last)")


def check_metric(metric: str | None, task_type: str, where: str = "training") -> None:
    """``metric_for_best_model`` must be one the task's validation computes."""
    if metric is None:
        return
    known = METRICS[task_type]
    if str(metric).removeprefix("eval_") not in known:
        raise ValueError(f"{where}.metric_for_best_model: {metric!r} is not computed for a "
                         f"{task_type} task; use one of {', '.join(known)}")


def evaluation_kwargs(training: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments values the validation sets when params leave them out: evaluate at
    every logging step (``eval_strategy: steps``, so validation curves sit beside the training
    loss), and ``greater_is_better`` from the metric (transformers' default reads only a
    ``*loss`` name as lower-is-better; ``mae`` is too)."""
    out: dict[str, Any] = {}
    if "eval_strategy" not in training:
        out["eval_strategy"] = "steps"
    metric = training.get("metric_for_best_model")
    if metric is not None and training.get("greater_is_better") is None:
        out["greater_is_better"] = str(metric).removeprefix("eval_") not in LOWER_IS_BETTER
    return out


def split_validation(df: pd.DataFrame, rows: float | None, seed: int, group_by_patient: bool,
                     task_type: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(training rows, validation rows)``: ``rows`` (a count, or a share < 1) of ``df`` held
    out, seeded and grouped like the train/test split. With groups the count is approximate
    (whole patients move). ``rows`` null or 0: ``(df, None)``."""
    if not rows:
        return df, None
    share = float(rows) if rows < 1 else float(rows) / len(df)
    if not 0 < share < 0.5:
        raise ValueError(f"validation.rows: {rows!r} of {len(df)} training rows leaves too few "
                         f"to train on (at most half)")
    from clinlm.split import split_table
    try:
        return split_table(df, share, seed, group_by_patient and "group" in df.columns, task_type)
    except ValueError as e:  # too few rows to hold every class / target quintile
        raise ValueError(f"validation.rows: {rows!r} of {len(df)} training rows: {e}") from None


def train_rows(run: Any, train_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows an LLM run trains on and validates on: the validation slice out of the training
    split first, then ``max_train_rows`` of the rest (:func:`clinlm.methods.interface.subsample`)."""
    from clinlm.methods.interface import subsample
    cfg = run.cfg
    rest, val = split_validation(train_df, (cfg.get("validation") or {}).get("rows"), run.seed,
                                 bool(run.task_cfg.get("split", {}).get("group_by_patient")),
                                 run.task_type)
    return subsample(rest, cfg["max_train_rows"], run.seed, run.task_type), val


def score_metrics(pred: pd.DataFrame, y_true: pd.Series, task_type: str) -> dict[str, float]:
    """Validation metrics of one method's predictions (its ``predict`` schema) against the
    slice's labels, with the evaluate stage's definitions (:mod:`clinlm.metrics`)."""
    from clinlm.metrics import classification_metrics, multiclass_metrics, regression_metrics
    if task_type == "multiclass":
        frame = pred.drop(columns=["id"]).assign(y_true=y_true.astype(str).to_numpy())
        m, _ = multiclass_metrics(frame)
        return {k: m[k] for k in ("accuracy", "macro_roc_auc", "log_loss")}
    if task_type == "classification":
        p = pred["p_yes"].to_numpy(float)
        frame = pd.DataFrame({"p_yes": p, "y_true": y_true.astype(str).to_numpy(),
                              "y_pred": np.where(p >= 0.5, "Yes", "No")})
        m, _ = classification_metrics(frame)
        return {"roc_auc": m["roc_auc"], "accuracy": m["accuracy"]}
    frame = pd.DataFrame({"y_pred": pred["y_pred"].to_numpy(float),
                          "y_true": pd.to_numeric(y_true).to_numpy(float)})
    m, _ = regression_metrics(frame)
    return {"mae": m["mae"]}
