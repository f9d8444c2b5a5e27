"""``method: stack`` -- does the LLM add information the baseline lacks?

A combiner on two fitted members of the same task: an LLM run (``sft`` or ``head``) and the
gbdt baseline run, named in the run entry (``runs.stack.<name>: {task, model, llm, baseline}``,
model names of runs of that task). It is fitted on a HELD-OUT part of the training split --
never the test split, never a row the LLM trained on:

* holdout: the training rows outside the LLM's own seeded subsample (``max_train_rows``,
  ``clinlm.methods.base.subsample`` with the LLM's seed: exactly the rows it saw), of which a
  seeded ``n_holdout`` are drawn (asserted disjoint from the LLM's rows and the test split);
* LLM scores on the holdout: the LLM method's real ``predict`` on those rows;
* baseline scores on the holdout: out-of-fold -- the holdout in ``folds`` parts, the gbdt
  refitted with the baseline run's own hyper-parameters on every training row outside a part
  and scoring that part (nearly the whole training split, like the deployed baseline);
* combiner: logistic regression on [logit p_yes(LLM), logit p_yes(gbdt)] (classification) or
  linear regression on [y_pred(LLM), y_pred(gbdt)] (regression; 90 % interval from the
  cross-validated holdout residuals' 5 / 95 % quantiles). Inputs are standardised, so a
  coefficient is "per SD of that member's score"; saved as JSON (no pickle).

The LLM's coefficient gets a bootstrap interval on the holdout (the same resampled rows refit
in one batched solve): an interval above 0 means the LLM adds information given the baseline.
Predict combines the members' predictions: for the test split their predictions CSVs (matched
by id), for any other table their own predict.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt

from clinlm.config import ModelCommon
from clinlm.io import write_json
from clinlm.methods.base import CLASSIFICATION, Method, Run, bounded_answers, subsample

COMBINER_FILE, HOLDOUT_FILE = "combiner.json", "holdout_ids.json"
LLM_MEMBER_METHODS = ("sft", "head")
EPS = 1e-6  # p_yes clipped to [EPS, 1 - EPS] before the logit
RIDGE = 1e-6  # keeps the logistic fit finite when the holdout is separable


class StackModelConfig(ModelCommon):
    method: Literal["stack"]
    n_holdout: PositiveInt = 300   # training rows outside the LLM's, for the combiner
    folds: int = Field(5, ge=2)    # baseline out-of-fold parts of the holdout
    n_boot: PositiveInt = 1000     # bootstrap resamples for the LLM coefficient's interval


# ---------------------------------------------------------------- combiner math (batched)

def member_features(task_type: str, llm: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(n, 2) combiner inputs: the members' logits (classification) or estimates (regression)."""
    x = np.column_stack([np.asarray(llm, float), np.asarray(base, float)])
    if task_type == CLASSIFICATION:
        x = np.clip(x, EPS, 1 - EPS)
        x = np.log(x / (1 - x))
    return x


def fit_weighted(task_type: str, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                 iters: int = 50) -> np.ndarray:
    """Coefficients (b, 1 + k) -- intercept first -- for each row of weights ``w`` (b, n).

    Regression: weighted least squares; classification: weighted logistic regression by
    Newton / IRLS, all weight vectors at once (a bootstrap is one batched solve per step).
    """
    w = np.atleast_2d(w)
    xi = np.column_stack([np.ones(len(x)), x])
    k = xi.shape[1]
    ridge = RIDGE * np.diag([0.0] + [1.0] * (k - 1))
    if task_type != CLASSIFICATION:
        h = np.einsum("bn,ni,nj->bij", w, xi, xi) + ridge
        return np.linalg.solve(h, ((w * y) @ xi)[..., None])[..., 0]
    beta = np.zeros((len(w), k))
    for _ in range(iters):
        mu = 1 / (1 + np.exp(-(beta @ xi.T)))
        grad = (w * (y - mu)) @ xi - beta @ ridge
        h = np.einsum("bn,ni,nj->bij", w * mu * (1 - mu), xi, xi) + ridge
        step = np.linalg.solve(h, grad[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta


class Combiner:
    """Standardised linear combiner of the two members (JSON in, JSON out)."""

    def __init__(self, task_type: str, mean: list[float], scale: list[float],
                 intercept: float, coef: list[float], residual_q: list[float] | None = None):
        self.task_type, self.mean, self.scale = task_type, np.asarray(mean), np.asarray(scale)
        self.intercept, self.coef = float(intercept), np.asarray(coef, float)
        self.residual_q = residual_q

    @classmethod
    def fit(cls, task_type: str, x: np.ndarray, y: np.ndarray) -> Combiner:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        beta = fit_weighted(task_type, (x - mean) / scale, y, np.ones(len(x)))[0]
        return cls(task_type, mean.tolist(), scale.tolist(), beta[0], beta[1:].tolist())

    def score(self, x: np.ndarray) -> np.ndarray:
        """p_yes (classification) or the estimate (regression)."""
        z = self.intercept + ((x - self.mean) / self.scale) @ self.coef
        return 1 / (1 + np.exp(-z)) if self.task_type == CLASSIFICATION else z

    def to_json(self) -> dict[str, Any]:
        return {"task_type": self.task_type, "features": ["llm", "baseline"],
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "intercept": self.intercept, "coef": self.coef.tolist(),
                "residual_q": self.residual_q}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Combiner:
        return cls(d["task_type"], d["mean"], d["scale"], d["intercept"], d["coef"],
                   d.get("residual_q"))


def cross_validated(task_type: str, x: np.ndarray, y: np.ndarray, folds: int,
                    seed: int) -> np.ndarray:
    """Out-of-fold combiner scores on the holdout (its honest holdout metric, residuals)."""
    out = np.empty(len(y))
    for train_idx, test_idx in _folds(task_type, y, folds, seed):
        out[test_idx] = Combiner.fit(task_type, x[train_idx], y[train_idx]).score(x[test_idx])
    return out


def llm_coefficient(task_type: str, x: np.ndarray, y: np.ndarray, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """The LLM's standardised coefficient with a 95 % bootstrap interval over holdout rows."""
    from clinlm.bootstrap import percentile_interval, resample_weights

    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    xs = (x - mean) / scale
    point = float(fit_weighted(task_type, xs, y, np.ones(len(y)))[0, 1])
    boot = np.concatenate([fit_weighted(task_type, xs, y, w)[:, 1]
                           for w in resample_weights(len(y), n_boot, seed)])
    ci = percentile_interval(boot)
    verdict = ("adds information" if ci[0] > 0 else
               "negative weight" if ci[1] < 0 else "no added information (interval holds 0)")
    return {"value": point, "ci95": ci, "n_boot": n_boot, "verdict": verdict}


def _folds(task_type: str, y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import KFold, StratifiedKFold
    if task_type == CLASSIFICATION:
        return StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
    return KFold(folds, shuffle=True, random_state=seed).split(y)


def holdout_metrics(task_type: str, y: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """ROC-AUC / PR-AUC or MAE of each score on the holdout rows."""
    from clinlm.bootstrap import weighted_average_precision, weighted_mae, weighted_roc_auc
    ones = np.ones((1, len(y)))
    if task_type == CLASSIFICATION:
        return {k: {"roc_auc": float(weighted_roc_auc(s, y == 1, ones)[0]),
                    "pr_auc": float(weighted_average_precision(s, y == 1, ones)[0])}
                for k, s in scores.items()}
    return {k: {"mae": float(weighted_mae(y, s, ones)[0])} for k, s in scores.items()}


# ---------------------------------------------------------------- members

@dataclasses.dataclass
class Members:
    """The two fitted runs a stack combines (their run names and ``Run`` objects)."""

    llm_name: str
    llm: Run
    baseline_name: str
    baseline: Run


def resolve_members(run: Run, params: dict[str, Any]) -> Members:
    """The stack run's entry in ``runs.stack`` (by task and model) and its two member runs."""
    from clinlm.params import all_runs
    from clinlm.runs import make_run

    runs = all_runs(params)
    mine = [(n, s) for n, s in runs.items()
            if s["method"] == "stack" and s["task"] == run.task and s["model"] == run.model]
    if len(mine) != 1:
        raise ValueError(f"runs.stack: expected one run with task {run.task!r} and model "
                         f"{run.model!r}, found {[n for n, _ in mine]}")
    name, spec = mine[0]
    found = {}
    for role, methods in (("llm", LLM_MEMBER_METHODS), ("baseline", ("gbdt",))):
        model = spec.get(role)
        hits = [n for n, s in runs.items() if s["task"] == run.task and s["model"] == model]
        if not model or not hits:
            raise ValueError(f"runs.stack.{name}.{role}: {model!r} is no model of a "
                             f"{run.task} run (name the member's model, e.g. "
                             f"{'smollm2-sft' if role == 'llm' else 'gbdt'})")
        member = make_run(hits[0], params)
        if member.cfg["method"] not in methods:
            raise ValueError(f"runs.stack.{name}.{role}: {hits[0]} is method "
                             f"{member.cfg['method']!r}; a stack's {role} must be one of {methods}")
        found[role] = (hits[0], member)
    return Members(found["llm"][0], found["llm"][1], found["baseline"][0], found["baseline"][1])


def member_method(run: Run) -> Method:
    """The member's method, imported by name here (not only via the registry), so the stack's
    stages list exactly this code among their deps (tests/test_dvc_deps.py follows imports)."""
    method = run.cfg["method"]
    if method == "sft":
        from clinlm.methods.sft import SFTMethod
        return SFTMethod()
    if method == "head":
        from clinlm.methods.head import HeadMethod
        return HeadMethod()
    if method == "gbdt":
        from clinlm.methods.gbdt import GBDTMethod
        return GBDTMethod()
    raise ValueError(f"{run.model}: a stack cannot hold a {method!r} member")


def load_member(run: Run) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The run's model loaded ONCE; returns ``table -> its predict rows`` (the numbers its
    method's ``predict`` gives, without loading anything again): what ``clinlm ask`` /
    ``serve`` keep in memory, for a stack's members and for sft / head / gbdt runs alike.
    An sft run on the vllm engine is the exception: its engine loads per call."""
    method, name = member_method(run), run.cfg["method"]
    if name == "head":
        model, tok, meta = method.load(run)
        return lambda df: method.predict_loaded(run, df, model, tok, meta)
    if name == "sft" and run.cfg["predict"]["engine"] != "vllm":
        from clinlm.llm.scorer import Scorer
        from clinlm.methods.sft import score_rows

        scorer = Scorer.from_run(run.model_dir, run.cfg)
        return lambda df: score_rows(scorer, run, df)
    if name == "gbdt":
        loaded = method.load(run)
        return lambda df: method.predict_loaded(run, df, loaded)
    return lambda df: method.predict(run, df)


def _member_scores(run: Run, df: pd.DataFrame,
                   predict: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> np.ndarray:
    """The member's p_yes / y_pred for ``df``'s rows, in order, through its own predict (or
    ``predict``, its loaded form from :func:`load_member`)."""
    out = (predict or (lambda d: member_method(run).predict(run, d)))(df)
    if list(out["id"].astype(str)) != list(df["id"].astype(str)):
        raise RuntimeError(f"{run.model}: predict returned rows out of order or missing")
    return out["p_yes" if run.task_type == CLASSIFICATION else "y_pred"].to_numpy(float)


def select_holdout(train_df: pd.DataFrame, llm: Run, n_holdout: int, seed: int,
                   test_ids: set[str] | None = None) -> tuple[pd.DataFrame, set[str]]:
    """(holdout rows, the LLM's training ids): ``n_holdout`` seeded training rows the LLM
    never saw -- its rows are recomputed with the very subsample its method trained on."""
    from clinlm.llm.validation import train_rows
    seen, val = train_rows(llm, train_df)  # its training rows and its validation slice
    llm_ids = set(seen["id"].astype(str)) | set([] if val is None else val["id"].astype(str))
    rest = train_df[~train_df["id"].astype(str).isin(llm_ids)]
    if rest.empty:
        raise ValueError(f"{llm.model}: trained on the whole training split "
                         f"(max_train_rows={llm.cfg['max_train_rows']}); no rows are left to "
                         f"fit a stack on")
    holdout = subsample(rest, n_holdout, seed, llm.task_type).reset_index(drop=True)
    ids = set(holdout["id"].astype(str))
    assert not ids & llm_ids, "holdout overlaps the LLM's training rows"
    if test_ids is not None:
        overlap = ids & test_ids
        if overlap:
            raise ValueError(f"holdout rows are in the test split: {sorted(overlap)[:3]}")
    return holdout, llm_ids


def baseline_oof(baseline: Run, train_df: pd.DataFrame, holdout: pd.DataFrame, folds: int,
                 seed: int) -> np.ndarray:
    """Baseline scores on the holdout, each from a gbdt (the baseline run's own settings)
    fitted on every training row outside that holdout part."""
    y = _target(baseline.task_type, holdout)
    out = np.empty(len(holdout))
    ids = train_df["id"].astype(str)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (_, part) in enumerate(_folds(baseline.task_type, y, folds, seed)):
            fold_run = dataclasses.replace(baseline, model_dir=Path(tmp) / f"fold{k}",
                                           log_dir=None, work_dir=None)
            held = set(holdout["id"].astype(str).iloc[part])
            member_method(fold_run).train(fold_run, train_df[~ids.isin(held)])
            out[part] = _member_scores(fold_run, holdout.iloc[part])
    return out


def _target(task_type: str, df: pd.DataFrame) -> np.ndarray:
    if task_type == CLASSIFICATION:
        return df["label"].eq("Yes").to_numpy(float)
    return df["label"].to_numpy(float)


def fit_combiner(task_type: str, llm: np.ndarray, base: np.ndarray, y: np.ndarray, folds: int,
                 seed: int, n_boot: int) -> tuple[Combiner, dict[str, Any]]:
    """The combiner fitted on the holdout rows both members scored, and its report: rows used,
    coefficients, the LLM coefficient's bootstrap interval, each member's and the
    cross-validated stack's holdout metrics (regression: the 90 % residual quantiles too)."""
    ok = ~(np.isnan(llm) | np.isnan(base))  # rows a member could not score
    x, y = member_features(task_type, llm[ok], base[ok]), y[ok]
    comb = Combiner.fit(task_type, x, y)
    cv = cross_validated(task_type, x, y, folds, seed)
    if task_type != CLASSIFICATION:
        comb.residual_q = np.quantile(y - cv, [0.05, 0.95]).tolist()
    return comb, {
        "n_holdout": int(ok.sum()), "n_holdout_failed": int((~ok).sum()), "folds": folds,
        "combiner": {"intercept": comb.intercept,
                     "coef": dict(zip(["llm", "baseline"], comb.coef.tolist(), strict=True)),
                     "inputs": "standardised " + ("logits" if task_type == CLASSIFICATION
                                                  else "estimates")},
        "llm_coef": llm_coefficient(task_type, x, y, n_boot, seed),
        "holdout_metrics": holdout_metrics(task_type, y, {"llm": llm[ok], "baseline": base[ok],
                                                          "stack (cross-validated)": cv})}


def combine_scores(comb: Combiner, llm: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The combiner on the members' scores; NaN where a member has none."""
    ok = ~(np.isnan(llm) | np.isnan(base))
    out = np.full(len(llm), np.nan)
    out[ok] = comb.score(member_features(comb.task_type, llm[ok], base[ok]))
    return out


def fit_stack(run: Run, train_df: pd.DataFrame, members: Members) -> dict[str, Any]:
    """Fit the combiner on held-out training rows and save it; returns the train info."""
    cfg, t0 = run.cfg, time.time()
    test_path = run.data_dir / "test.parquet"
    test_ids = (set(pd.read_parquet(test_path, columns=["id"])["id"].astype(str))
                if test_path.exists() else None)
    holdout, llm_ids = select_holdout(train_df, members.llm, cfg["n_holdout"], run.seed, test_ids)
    y = _target(run.task_type, holdout)
    llm = _member_scores(members.llm, holdout)
    base = baseline_oof(members.baseline, train_df, holdout, cfg["folds"], run.seed)
    comb, report = fit_combiner(run.task_type, llm, base, y, cfg["folds"], run.seed, cfg["n_boot"])
    write_json(run.model_dir / COMBINER_FILE, {
        **comb.to_json(), "llm": {"run": members.llm_name, "model": members.llm.model},
        "baseline": {"run": members.baseline_name, "model": members.baseline.model}})
    write_json(run.model_dir / HOLDOUT_FILE, sorted(holdout["id"].astype(str)))
    return {"method": "stack", "n_train": report["n_holdout"], "stack": {
        "llm": members.llm_name, "baseline": members.baseline_name,
        "n_llm_train_rows": len(llm_ids), **report}, "train_seconds": round(time.time() - t0, 2)}


def combine(run: Run, llm: np.ndarray, base: np.ndarray, ids: np.ndarray,
            comb: Combiner | None = None) -> pd.DataFrame:
    """The saved combiner (or ``comb``, already read) applied to the members' scores -> the
    method predict schema."""
    if comb is None:
        comb = Combiner.from_json(json.loads((run.model_dir / COMBINER_FILE).read_text()))
    s = combine_scores(comb, llm, base)
    if run.task_type == CLASSIFICATION:
        return pd.DataFrame({"id": ids, "p_yes": s})
    lo, hi = comb.residual_q
    return pd.DataFrame({"id": ids, **bounded_answers(run.task_cfg, s, s + lo, s + hi)})


def _from_csv(run: Run, member: dict[str, str], ids: pd.Series) -> np.ndarray:
    from clinlm.paths import predictions_path
    path = predictions_path(run.task, member["model"])
    pred = pd.read_csv(path, dtype={"id": str}).set_index("id")
    missing = ids[~ids.isin(pred.index)]
    if len(missing):
        raise ValueError(f"{member['run']}: {path} lacks {len(missing)} row(s), e.g. "
                         f"{missing.iloc[0]!r}; rerun its predict stage")
    return pred.loc[ids, "p_yes" if run.task_type == CLASSIFICATION else "y_pred"].to_numpy(float)


def _is_test_split(run: Run, df: pd.DataFrame) -> bool:
    """True when every row of ``df`` is a row of the task's test split, unchanged."""
    path = run.data_dir / "test.parquet"
    if not path.exists():
        return False
    test = pd.read_parquet(path).assign(id=lambda t: t["id"].astype(str)).set_index("id")
    d = df.assign(id=df["id"].astype(str)).set_index("id")
    cols = [c for c in d.columns if c in test.columns]
    if not d.index.isin(test.index).all() or not cols:
        return False
    return test.loc[d.index, cols].reset_index(drop=True).equals(d[cols].reset_index(drop=True))


class StackMethod(Method):
    """Logistic / linear combiner of an LLM run and the baseline, fitted on held-out rows."""

    name = "stack"

    def check_ready(self, run: Run) -> None:
        """Both members exist in params and are of a kind a stack can hold."""
        from clinlm.params import load_params
        resolve_members(run, load_params())

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit on held-out training rows (module docstring); save ``combiner.json``."""
        from clinlm.params import load_params
        return fit_stack(run, train_df, resolve_members(run, load_params()))

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """The test split from the members' predictions CSVs; any other table through the
        members' own predict."""
        saved = json.loads((run.model_dir / COMBINER_FILE).read_text())
        ids = df["id"].astype(str).reset_index(drop=True)
        if _is_test_split(run, df):
            llm, base = (_from_csv(run, saved[r], ids) for r in ("llm", "baseline"))
        else:
            from clinlm.params import load_params
            from clinlm.runs import make_run
            params = load_params()
            llm, base = (_member_scores(make_run(saved[r]["run"], params), df)
                         for r in ("llm", "baseline"))
        return combine(run, llm, base, ids.to_numpy())

    def load(self, run: Run, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The combiner and both members, each loaded ONCE (:func:`load_member`): what
        ``clinlm ask`` / ``serve`` keep, so a request never reloads a member. ``params``: the
        params the member runs are made from (default: ``params.yaml``)."""
        from clinlm.params import load_params
        from clinlm.runs import make_run

        saved = json.loads((run.model_dir / COMBINER_FILE).read_text())
        params = params if params is not None else load_params()
        members = {r: make_run(saved[r]["run"], params) for r in ("llm", "baseline")}
        return {"combiner": Combiner.from_json(saved), "members": members,
                "predict": {r: load_member(m) for r, m in members.items()}}

    def predict_loaded(self, run: Run, df: pd.DataFrame, loaded: dict[str, Any]) -> pd.DataFrame:
        """:meth:`predict` with the models of :meth:`load`: every table through the loaded
        members (the same numbers as their predictions CSVs on the test split)."""
        ids = df["id"].astype(str).reset_index(drop=True)
        llm, base = (_member_scores(loaded["members"][r], df, loaded["predict"][r])
                     for r in ("llm", "baseline"))
        return combine(run, llm, base, ids.to_numpy(), loaded["combiner"])
