"""``method: gbdt`` -- scikit-learn HistGradientBoosting on the ``f_*`` feature columns.

The yardstick every LLM is compared with: same split, same features the statements carry.
``hist_gbdt`` in params passes straight to HistGradientBoostingClassifier/Regressor.
Regression also fits two quantile models (5 % and 95 %) for a 90 % interval. Fitted apart
from the point model, they can cross each other and miss the point estimate: the interval is
made consistent (its ends ordered and widened to hold the estimate) and every value bounded by
the task's answer range, ``clipped`` flagging a moved estimate
(:func:`clinlm.methods.interface.bounded_answers`).

Saved with skops (``model.skops``), not pickle: a model folder pulled from a shared DVC remote
must not run code when loaded. Loading trusts only the types a fitted HistGradientBoosting
model holds (``TRUSTED``) and refuses a file that needs any other. The feature columns and
categories go to ``features.json``. Both files are written atomically.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import numpy as np
import pandas as pd

from clinlm.config import ModelCommon
from clinlm.io import atomic_path, write_json
from clinlm.methods.interface import (
    CLASSIFICATION,
    MULTICLASS,
    Method,
    Run,
    bounded_answers,
    class_probs,
    read_classes,
    save_classes,
    training_classes,
)

log = logging.getLogger(__name__)
MODEL_FILE, FEATURES_FILE = "model.skops", "features.json"
# what skops cannot vouch for by itself in a fitted HistGradientBoosting model (checked on load)
TRUSTED = ["functools.partial", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
           "sklearn.utils.validation.check_array"]


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


def dump_models(models: dict[str, Any], path) -> None:
    """skops-dump ``models`` to ``path`` (atomically) with the same bytes for the same models.

    skops names arrays and memo entries after ``id()`` of the objects and stamps the zip with
    the time, so two dumps of one model differ; here every such id is renumbered in order of
    first appearance and the zip members get a fixed time and order (a retrain with the same
    seed and data then leaves the model folder's DVC hash unchanged).
    """
    import re
    import zipfile

    import skops.io as sio
    with atomic_path(path) as raw:
        sio.dump(models, raw)
        with zipfile.ZipFile(raw) as z:
            members = {name: z.read(name) for name in z.namelist()}
        schema = members.pop("schema.json").decode()
        ids: dict[str, str] = {}
        for num in re.findall(r'"__id__": (\d+)|"file": "(\d+)\.npy"', schema):
            key = num[0] or num[1]
            ids.setdefault(key, str(len(ids)))
        schema = re.sub(r'("__id__": )(\d+)', lambda m: m.group(1) + ids[m.group(2)], schema)
        schema = re.sub(r'("file": ")(\d+)(\.npy")',
                        lambda m: m.group(1) + ids[m.group(2)] + m.group(3), schema)
        files = {"schema.json": schema.encode()}
        for name, data in members.items():
            stem = name.removesuffix(".npy")
            files[f"{ids.get(stem, stem)}.npy" if name.endswith(".npy") else name] = data
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name in sorted(files):
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name],
                           compress_type=zipfile.ZIP_DEFLATED)


def load_models(path) -> dict[str, Any]:
    """The saved models, refusing any type outside ``TRUSTED`` (no code runs on load)."""
    import skops.io as sio
    unknown = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED))
    if unknown:
        raise ValueError(f"{path}: refusing to load types a HistGradientBoosting model does not "
                         f"hold: {unknown}")
    return sio.load(path, trusted=TRUSTED)


class GBDTMethod(Method):
    """Gradient boosting on tabular features (classifier or regressor)."""

    name = "gbdt"
    config = GBDTModelConfig
    stack_role = "baseline"
    library = "sklearn"

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit and save the model(s) to ``model_dir/model.skops`` (+ ``features.json``)."""
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        kw = {"random_state": run.seed, "categorical_features": "from_dtype",
              **run.cfg["hist_gbdt"]}
        x = feature_frame(train_df)
        empty = [c for c in x.columns if x[c].isna().all()]
        if empty:  # a feature this table lacks: sklearn cannot bin an all-missing column
            log.warning("%s: %d feature(s) empty in every training row, left out: %s",
                        run.model, len(empty), empty)
            x = x.drop(columns=empty)
            if x.shape[1] == 0:
                raise ValueError(f"{run.model}: every f_* feature is empty in the training "
                                 "rows: nothing to learn from")
        t0 = time.time()
        if run.task_type == CLASSIFICATION:
            models = {"main": HistGradientBoostingClassifier(**kw).fit(x, train_df["label"].eq("Yes"))}
        elif run.task_type == MULTICLASS:  # the class index in the run's class order
            classes = training_classes(run, train_df)
            y = pd.Index(classes["labels"]).get_indexer(train_df["label"].astype(str))
            models = {"main": HistGradientBoostingClassifier(**kw).fit(x, y)}
            save_classes(run.model_dir, classes)
        else:
            y = train_df["label"].astype(float)
            models = {"main": HistGradientBoostingRegressor(**kw).fit(x, y)}
            for name, q in [("lo", 0.05), ("hi", 0.95)]:
                models[name] = HistGradientBoostingRegressor(
                    **{**kw, "loss": "quantile", "quantile": q}).fit(x, y)
        dump_models(models, run.model_dir / MODEL_FILE)
        write_json(run.model_dir / FEATURES_FILE, {
            "columns": list(x.columns),
            "categories": {c: [str(v) for v in x[c].cat.categories] for c in x.columns
                           if isinstance(x[c].dtype, pd.CategoricalDtype)}})
        return {"method": self.name, "n_train": len(train_df), "n_features": x.shape[1],
                "empty_features_left_out": empty,
                "train_seconds": round(time.time() - t0, 2)}

    def load(self, run: Run):
        """The models read once (:meth:`load_models`); ``table -> predict rows``."""
        loaded = self.load_models(run)
        return lambda df: self.predict_loaded(run, df, loaded)

    def answer_reading(self, run: Run) -> str:
        ans = run.task_cfg.get("answer") or {}
        what = {CLASSIFICATION: ".", MULTICLASS: ", one probability per label; the answer is "
                "the most probable label."}
        return ("scikit-learn HistGradientBoosting on the table's `f_*` features"
                + what.get(run.task_type,
                           f"; the estimate and its 90 % interval (5 %/95 % quantile models, "
                           f"widened to hold the estimate) bounded to [{ans.get('min')}, "
                           f"{ans.get('max')}]."))

    def load_models(self, run: Run) -> dict[str, Any]:
        """The saved models and feature layout, read once (``clinlm ask`` / ``serve`` keep
        them in memory; :meth:`predict_loaded` uses them)."""
        loaded = {"models": load_models(run.model_dir / MODEL_FILE),
                  "features": json.loads((run.model_dir / FEATURES_FILE).read_text())}
        if run.task_type == MULTICLASS:
            loaded["classes"] = read_classes(run.model_dir)
        return loaded

    def predict_loaded(self, run: Run, df: pd.DataFrame, loaded: dict[str, Any]) -> pd.DataFrame:
        """:meth:`predict` with the models of :meth:`load` (nothing read from disk)."""
        return self.predict(run, df, loaded)

    def predict(self, run: Run, df: pd.DataFrame,
                loaded: dict[str, Any] | None = None) -> pd.DataFrame:
        """Probability of ``Yes`` (classification), of each class (multiclass) or estimate +
        90 % interval (regression)."""
        loaded = self.load_models(run) if loaded is None else loaded
        m, saved = loaded["models"], loaded["features"]
        x = feature_frame(df).reindex(columns=saved["columns"])  # absent there: missing
        for c, cats in saved["categories"].items():  # unseen categories -> NaN, as in training
            x[c] = pd.Categorical(x[c].astype(object).astype(str).where(x[c].notna()),
                                  categories=cats)
        if run.task_type == CLASSIFICATION:
            return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": m["main"].predict_proba(x)[:, 1]})
        if run.task_type == MULTICLASS:  # a class absent from training rows: probability 0
            labels = loaded["classes"]["labels"]
            p = np.zeros((len(x), len(labels)))
            p[:, m["main"].classes_.astype(int)] = m["main"].predict_proba(x)
            return pd.DataFrame({"id": df["id"].to_numpy(), **class_probs(labels, p)})
        est = bounded_answers(run.task_cfg, m["main"].predict(x), m["lo"].predict(x),
                              m["hi"].predict(x))
        return pd.DataFrame({"id": df["id"].to_numpy(), **est})
