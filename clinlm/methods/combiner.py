"""The stack's combiner maths: two members' scores -> one answer, fitted in batched solves.

Pure numpy (no model, no files): :mod:`clinlm.methods.stack` picks the rows and the members'
scores, this module fits and applies the combiner and measures what the LLM adds.

* classification: logistic regression on the members' logits ``logit p_yes``;
* regression: linear regression on the members' estimates;
* multiclass: a log-linear pool, ``P(class) ∝ exp(c_class + a_llm x_llm + a_base x_base)``
  where ``x`` is a member's centred log-probability of that class (its log-probabilities
  minus their mean over the classes). One weight per member whatever the number of classes,
  plus a class intercept: with two classes it is the logistic combiner above.

Inputs are standardised per member (a coefficient is "per SD of that member's score"); the
coefficients of every bootstrap resample come from one batched Newton / least-squares solve.
Coefficient layout: the intercept(s) first, then the LLM's, then the baseline's, so the LLM
coefficient is always column ``-2`` (:data:`LLM_COEF`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clinlm.methods.interface import CLASSIFICATION, LABELLED, MULTICLASS

EPS = 1e-6  # p_yes (a class probability) clipped to [EPS, 1 - EPS] before the logit (log)
RIDGE = 1e-6  # keeps the logistic fit finite when the holdout is separable
LLM_COEF = -2  # the LLM's column in a coefficient row: [intercept(s)..., llm, baseline]


def member_features(task_type: str, llm: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The combiner inputs: (n, 2) -- the members' logits (classification) or estimates
    (regression) -- or (n, k, 2), each member's centred log-probabilities (multiclass)."""
    if task_type == MULTICLASS:
        x = np.log(np.clip(np.stack([np.asarray(llm, float), np.asarray(baseline, float)],
                                    axis=2), EPS, 1.0))
        return x - x.mean(axis=1, keepdims=True)
    x = np.column_stack([np.asarray(llm, float), np.asarray(baseline, float)])
    if task_type == CLASSIFICATION:
        x = np.clip(x, EPS, 1 - EPS)
        x = np.log(x / (1 - x))
    return x


def fit_weighted(task_type: str, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                 iters: int = 50) -> np.ndarray:
    """Coefficients (b, p) -- intercept(s) first -- for each row of weights ``w`` (b, n).

    Regression: weighted least squares; classification: weighted logistic regression by
    Newton / IRLS, all weight vectors at once (a bootstrap is one batched solve per step);
    multiclass: the log-linear pool by Newton (:func:`_fit_pool`; ``y`` the class index).
    """
    if task_type == MULTICLASS:
        return _fit_pool(x, y, w, iters)
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


def pool_design(x: np.ndarray) -> np.ndarray:
    """(n, k, k - 1 + m): per row and class, the one-hot of the class (class 0 has no
    intercept: the softmax is unchanged by a shift) and the members' features ``x`` (n, k, m)."""
    n, k, _ = x.shape
    return np.concatenate([np.broadcast_to(np.eye(k)[:, 1:], (n, k, k - 1)), x], axis=2)


def _fit_pool(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int) -> np.ndarray:
    """Weighted multinomial Newton steps for the log-linear pool (module docstring), for each
    row of weights ``w`` at once: ``[c_1 .. c_{k-1}, a_llm, a_base]`` per row. A small ridge
    on every coefficient keeps a resample without some class (or a separable one) finite."""
    w = np.atleast_2d(w)
    d = pool_design(x)
    onehot = np.eye(x.shape[1])[np.asarray(y, dtype=np.int64)]
    ridge = RIDGE * np.eye(d.shape[2])
    beta = np.zeros((len(w), d.shape[2]))
    for _ in range(iters):
        mu = pool_probs(d, beta)                                   # (b, n, k)
        grad = np.einsum("bn,bnk,nkp->bp", w, onehot[None] - mu, d) - beta @ ridge
        mean_d = np.einsum("bnk,nkp->bnp", mu, d)                  # E[design] per row
        h = (np.einsum("bn,bnk,nkp,nkq->bpq", w, mu, d, d)
             - np.einsum("bn,bnp,bnq->bpq", w, mean_d, mean_d) + ridge)
        step = np.linalg.solve(h, grad[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def pool_probs(d: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Class probabilities (b, n, k) of the pool with coefficients ``beta`` (b, p)."""
    z = np.einsum("nkp,bp->bnk", d, np.atleast_2d(beta))
    z -= z.max(axis=2, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=2, keepdims=True)


class Combiner:
    """Standardised linear combiner of the two members (JSON in, JSON out). ``intercept`` is
    one number, or one per class (multiclass, the first 0)."""

    def __init__(self, task_type: str, mean: list[float], scale: list[float],
                 intercept: float | list[float], coef: list[float],
                 residual_q: list[float] | None = None):
        self.task_type, self.mean, self.scale = task_type, np.asarray(mean), np.asarray(scale)
        self.intercept = (np.asarray(intercept, float) if task_type == MULTICLASS
                          else float(intercept))
        self.coef = np.asarray(coef, float)
        self.residual_q = residual_q

    @classmethod
    def fit(cls, task_type: str, x: np.ndarray, y: np.ndarray) -> Combiner:
        if task_type == MULTICLASS:  # centred already: only a scale per member
            scale = x.reshape(-1, x.shape[2]).std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)
            beta = fit_weighted(task_type, x / scale, y, np.ones(len(x)))[0]
            k = x.shape[1]
            return cls(task_type, [0.0] * x.shape[2], scale.tolist(),
                       [0.0, *beta[:k - 1].tolist()], beta[k - 1:].tolist())
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        beta = fit_weighted(task_type, (x - mean) / scale, y, np.ones(len(x)))[0]
        return cls(task_type, mean.tolist(), scale.tolist(), beta[0], beta[1:].tolist())

    def score(self, x: np.ndarray) -> np.ndarray:
        """p_yes (classification), the estimate (regression) or the class probabilities
        (n, k) (multiclass)."""
        z = self.intercept + ((x - self.mean) / self.scale) @ self.coef
        if self.task_type == MULTICLASS:
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            return p / p.sum(axis=1, keepdims=True)
        return 1 / (1 + np.exp(-z)) if self.task_type == CLASSIFICATION else z

    def to_json(self) -> dict[str, Any]:
        intercept = (self.intercept.tolist() if self.task_type == MULTICLASS
                     else self.intercept)
        return {"task_type": self.task_type, "features": ["llm", "baseline"],
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "intercept": intercept, "coef": self.coef.tolist(),
                "residual_q": self.residual_q}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Combiner:
        return cls(d["task_type"], d["mean"], d["scale"], d["intercept"], d["coef"],
                   d.get("residual_q"))


def folds_of(task_type: str, y: np.ndarray, folds: int, seed: int):
    """(train, test) index pairs: stratified by label for a labelled task, plain K-fold else."""
    from sklearn.model_selection import KFold, StratifiedKFold
    if task_type in LABELLED:
        return StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
    return KFold(folds, shuffle=True, random_state=seed).split(y)


def cross_validated(task_type: str, x: np.ndarray, y: np.ndarray, folds: int,
                    seed: int) -> np.ndarray:
    """Out-of-fold combiner scores on the holdout (its honest holdout metric, residuals)."""
    out = np.empty((len(y), x.shape[1]) if task_type == MULTICLASS else len(y))
    for train_idx, test_idx in folds_of(task_type, y, folds, seed):
        out[test_idx] = Combiner.fit(task_type, x[train_idx], y[train_idx]).score(x[test_idx])
    return out


def standardised(task_type: str, x: np.ndarray) -> np.ndarray:
    """``x`` as :meth:`Combiner.fit` standardises it (multiclass: scaled only)."""
    if task_type == MULTICLASS:
        scale = x.reshape(-1, x.shape[2]).std(axis=0)
        return x / np.where(scale > 0, scale, 1.0)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return (x - mean) / np.where(scale > 0, scale, 1.0)


def llm_coefficient(task_type: str, x: np.ndarray, y: np.ndarray, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """The LLM's standardised coefficient with a 95 % bootstrap interval over holdout rows."""
    from clinlm.bootstrap import percentile_interval, resample_weights

    xs = standardised(task_type, x)
    point = float(fit_weighted(task_type, xs, y, np.ones(len(y)))[0, LLM_COEF])
    boot = np.concatenate([fit_weighted(task_type, xs, y, w)[:, LLM_COEF]
                           for w in resample_weights(len(y), n_boot, seed)])
    ci = percentile_interval(boot)
    verdict = ("adds information" if ci[0] > 0 else
               "negative weight" if ci[1] < 0 else "no added information (interval holds 0)")
    return {"value": point, "ci95": ci, "n_boot": n_boot, "verdict": verdict}


def holdout_metrics(task_type: str, y: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """ROC-AUC / PR-AUC, accuracy / macro ROC-AUC / log loss (multiclass) or MAE of each
    score on the holdout rows."""
    from clinlm.bootstrap import (
        task_statistics,
        weighted_average_precision,
        weighted_mae,
        weighted_roc_auc,
    )
    ones = np.ones((1, len(y)))
    if task_type == MULTICLASS:
        return {k: {m: float(f(ones)[0]) for m, f in task_statistics(task_type, y, s).items()}
                for k, s in scores.items()}
    if task_type == CLASSIFICATION:
        return {k: {"roc_auc": float(weighted_roc_auc(s, y == 1, ones)[0]),
                    "pr_auc": float(weighted_average_precision(s, y == 1, ones)[0])}
                for k, s in scores.items()}
    return {k: {"mae": float(weighted_mae(y, s, ones)[0])} for k, s in scores.items()}


def scored(llm: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Rows both members scored (a row of a multiclass member: every class probability)."""
    llm, baseline = np.asarray(llm, float), np.asarray(baseline, float)
    bad = np.isnan(llm) | np.isnan(baseline)
    return ~(bad.any(axis=1) if bad.ndim == 2 else bad)


def fit_combiner(task_type: str, llm: np.ndarray, baseline: np.ndarray, y: np.ndarray, folds: int,
                 seed: int, n_boot: int) -> tuple[Combiner, dict[str, Any]]:
    """The combiner fitted on the holdout rows both members scored, and its report: rows used,
    coefficients, the LLM coefficient's bootstrap interval, each member's and the
    cross-validated stack's holdout metrics (regression: the 90 % residual quantiles too)."""
    ok = scored(llm, baseline)  # rows a member could not score are left out
    x, y = member_features(task_type, llm[ok], baseline[ok]), y[ok]
    comb = Combiner.fit(task_type, x, y)
    cv = cross_validated(task_type, x, y, folds, seed)
    if task_type not in LABELLED:
        comb.residual_q = np.quantile(y - cv, [0.05, 0.95]).tolist()
    inputs = {CLASSIFICATION: "logits", MULTICLASS: "centred log-probabilities"}
    intercept = (comb.intercept.tolist() if task_type == MULTICLASS else comb.intercept)
    return comb, {
        "n_holdout": int(ok.sum()), "n_holdout_failed": int((~ok).sum()), "folds": folds,
        "combiner": {"intercept": intercept,
                     "coef": dict(zip(["llm", "baseline"], comb.coef.tolist(), strict=True)),
                     "inputs": "standardised " + inputs.get(task_type, "estimates")},
        "llm_coef": llm_coefficient(task_type, x, y, n_boot, seed),
        "holdout_metrics": holdout_metrics(task_type, y, {"llm": llm[ok], "baseline": baseline[ok],
                                                          "stack (cross-validated)": cv})}


def combine_scores(comb: Combiner, llm: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The combiner on the members' scores; NaN where a member has none."""
    ok = scored(llm, baseline)
    out = np.full(np.shape(llm), np.nan)
    out[ok] = comb.score(member_features(comb.task_type, llm[ok], baseline[ok]))
    return out
