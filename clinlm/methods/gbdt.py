"""``method: gbdt`` -- scikit-learn HistGradientBoosting on the ``f_*`` feature columns.

The yardstick every LLM is compared with: same split, same features the statements carry.
``hist_gbdt`` in params passes straight to HistGradientBoostingClassifier/Regressor.
Regression also fits two quantile models (5 % and 95 %) for a 90 % interval.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, Literal

import numpy as np
import pandas as pd

from clinlm.config import ModelCommon
from clinlm.methods.base import CLASSIFICATION, Method, Run


class GBDTModelConfig(ModelCommon):
    method: Literal["gbdt"]
    hist_gbdt: dict[str, Any] = {}     # sklearn HistGradientBoosting* arguments


def feature_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ``f_*`` columns; object columns become pandas categoricals."""
    cols = [c for c in df.columns if c.startswith("f_")]
    if not cols:
        raise ValueError("no feature columns (f_*) in the table")
    x = df[cols].copy()
    for c in cols:
        if x[c].dtype == object:
            x[c] = x[c].astype("category")
    return x


class GBDTMethod(Method):
    """Gradient boosting on tabular features (classifier or regressor)."""

    name = "gbdt"

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit and pickle the model(s) to ``model_dir/model.pkl``."""
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        kw = {"random_state": run.seed, "categorical_features": "from_dtype",
              **run.cfg["hist_gbdt"]}
        x = feature_frame(train_df)
        t0 = time.time()
        if run.task_type == CLASSIFICATION:
            models = {"main": HistGradientBoostingClassifier(**kw).fit(x, train_df["label"].eq("Yes"))}
        else:
            y = train_df["label"].astype(float)
            models = {"main": HistGradientBoostingRegressor(**kw).fit(x, y)}
            for name, q in [("lo", 0.05), ("hi", 0.95)]:
                models[name] = HistGradientBoostingRegressor(
                    **{**kw, "loss": "quantile", "quantile": q}).fit(x, y)
        run.model_dir.mkdir(parents=True, exist_ok=True)
        with open(run.model_dir / "model.pkl", "wb") as f:
            pickle.dump({"models": models, "columns": list(x.columns),
                         "categories": {c: list(x[c].cat.categories) for c in x.columns
                                        if isinstance(x[c].dtype, pd.CategoricalDtype)}}, f)
        return {"method": self.name, "n_train": len(train_df), "n_features": x.shape[1],
                "train_seconds": round(time.time() - t0, 2)}

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Probability of ``Yes`` (classification) or estimate + 90 % interval (regression)."""
        with open(run.model_dir / "model.pkl", "rb") as f:
            saved = pickle.load(f)
        x = feature_frame(df)[saved["columns"]]
        for c, cats in saved["categories"].items():  # unseen categories -> NaN, as in training
            x[c] = pd.Categorical(x[c].astype(object), categories=cats)
        m = saved["models"]
        if run.task_type == CLASSIFICATION:
            return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": m["main"].predict_proba(x)[:, 1]})
        lo, hi = m["lo"].predict(x), m["hi"].predict(x)
        return pd.DataFrame({"id": df["id"].to_numpy(), "y_pred": m["main"].predict(x),
                             "y_lo": np.minimum(lo, hi), "y_hi": np.maximum(lo, hi)})
