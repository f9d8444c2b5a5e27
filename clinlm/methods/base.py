"""The one interface every method (sft, head, vlm, cohere, gbdt) implements.

A method turns a training table into a saved model folder, and a saved model folder plus a
table into predictions. The train/predict *stages* own file handling and the CSV schema; a
method only sees DataFrames and a folder. Heavy imports (torch, transformers, cohere) live
inside the method modules that need them, so importing the registry is cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass
class Run:
    """Everything a method needs to know about one (task, model) pair.

    Attributes:
        task: task name, e.g. ``"noshow"`` or ``"vascular_age"``.
        task_type: ``"classification"`` (label ``Yes``/``No``) or ``"regression"`` (float).
        model: model entry name in ``params.yaml`` (``models.<model>``).
        cfg: the ``models.<model>`` section, as a plain dict with every default filled in
            (``clinlm.config``) when the Run is made.
        model_dir: where train saves and predict loads (``data/models/<task>/<model>``).
        data_dir: the task's processed data folder (``data/processed/<task>``): split
            parquet files and the format stage's JSONL files live there.
        seed: the global seed.
        task_cfg: the ``tasks.<task>`` section (prompts, target range, ...), defaults filled.
        log_dir: where training curves go (dvclive), or None.
        work_dir: scratch state that survives an interrupted stage (resumable API calls);
            not a DVC output, so an interrupted predict never dirties ``model_dir``.
    """

    task: str
    task_type: str
    model: str
    cfg: dict[str, Any]
    model_dir: Path
    data_dir: Path
    seed: int = 42
    task_cfg: dict[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        # every default filled in from the typed configs (clinlm.config): code reads
        # cfg["predict"]["batch_size"], never cfg.get(key, default)
        from clinlm.config import model_config_class
        from clinlm.tasks import TaskSection
        self.cfg = model_config_class(self.cfg["method"]).model_validate(self.cfg).model_dump()
        task = {k: v for k, v in self.task_cfg.items() if k != "type"}
        self.task_cfg = TaskSection.model_validate({"type": self.task_type, **task}).model_dump()
        self.model_dir = Path(self.model_dir)
        self.data_dir = Path(self.data_dir)


def bounded_answers(task_cfg: dict[str, Any], y_pred: Any, y_lo: Any = None,
                    y_hi: Any = None) -> dict[str, np.ndarray]:
    """Regression answers inside what is possible, each interval holding its estimate.

    A head or a tree ensemble extrapolates freely (a linear head said -7 years for a
    58-year-old); the task's ``answer`` range (``min``/``max``, the range sft's numeric
    decoding enumerates) bounds every value here. ``clipped`` says which rows' point estimate
    was moved onto that range. An interval is then widened, when needed, to contain its
    point estimate: quantile models fitted separately from the point model can cross it.
    NaN stays NaN (no answer, no interval). Returns ``{"y_pred", "y_lo", "y_hi", "clipped"}``.
    """
    lo_b, hi_b = float(task_cfg["answer"]["min"]), float(task_cfg["answer"]["max"])
    pred = np.asarray(y_pred, dtype=np.float64)
    nan = np.full(pred.shape, np.nan)
    lo = nan if y_lo is None else np.asarray(y_lo, dtype=np.float64)
    hi = nan if y_hi is None else np.asarray(y_hi, dtype=np.float64)
    clipped = (pred < lo_b) | (pred > hi_b)
    pred = np.clip(pred, lo_b, hi_b)
    lo, hi = np.clip(lo, lo_b, hi_b), np.clip(hi, lo_b, hi_b)
    both = ~np.isnan(lo) & ~np.isnan(hi)
    lo, hi = (np.where(both, np.fmin(np.fmin(lo, hi), pred), lo),
              np.where(both, np.fmax(np.fmax(lo, hi), pred), hi))
    return {"y_pred": pred, "y_lo": lo, "y_hi": hi, "clipped": clipped}


def subsample(df: pd.DataFrame, n: int | None, seed: int, task_type: str) -> pd.DataFrame:
    """A seeded, stratified (classification) subsample of ``n`` rows; all rows when n is None."""
    if n is None or n >= len(df):
        return df
    if task_type == CLASSIFICATION:
        frac = n / len(df)
        parts = [g.sample(frac=frac, random_state=seed) for _, g in df.groupby("label")]
        return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


class Method(ABC):
    """Train on a table, predict on a table.

    Input tables have at least the columns ``id`` (str), ``statement`` (str, the English
    sentence), ``label`` (``"Yes"``/``"No"`` for classification, float for regression; may
    be missing at predict time) and numeric/categorical feature columns prefixed ``f_``.

    ``predict`` returns a DataFrame with column ``id`` (same order as the input) and:
      * classification: ``p_yes`` (float in [0, 1], probability of ``"Yes"``; NaN if the
        method could not produce one for that row);
      * regression: ``y_pred`` (the point estimate), ``y_lo``, ``y_hi`` (90 % interval;
        NaN when the method has none), all inside the task's answer range, and ``clipped``
        (bool) where the estimate was moved onto that range (:func:`bounded_answers`).
    Optional extra columns: ``raw`` (raw model reply) and ``ok`` (bool, reply parsed).
    """

    name: str = "base"

    def check_ready(self, run: Run) -> None:
        """Fail fast, before any work, when the method cannot run (e.g. a missing API key)."""
        del run  # local methods have nothing to check

    @abstractmethod
    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit on ``train_df`` and save everything predict needs under ``run.model_dir``.

        Returns a small JSON-able dict of facts about training (rows used, seconds, ...).
        """

    @abstractmethod
    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load from ``run.model_dir`` and predict every row of ``df`` (schema above)."""
