"""``method: stack`` -- does the LLM add information the baseline lacks?

A combiner on two fitted members of the same task: an LLM run (``sft`` or ``head``) and the
gbdt baseline run, named in the run entry (``runs.stack.<name>: {task, model, llm, baseline}``,
model names of runs of that task). It is fitted on a HELD-OUT part of the training split --
never the test split, never a row the LLM trained on:

* holdout: the training rows outside the LLM's own seeded subsample (``max_train_rows``,
  ``clinlm.methods.interface.subsample`` with the LLM's seed: exactly the rows it saw), of which a
  seeded ``n_holdout`` are drawn (asserted disjoint from the LLM's rows and the test split);
* LLM scores on the holdout: the LLM method's real ``predict`` on those rows;
* baseline scores on the holdout: out-of-fold -- the holdout in ``folds`` parts, the gbdt
  refitted with the baseline run's own hyper-parameters on every training row outside a part
  and scoring that part (nearly the whole training split, like the deployed baseline);
* combiner (:mod:`clinlm.methods.combiner`): logistic regression on [logit p_yes(LLM),
  logit p_yes(gbdt)] (classification), a log-linear pool of the members' class probabilities
  (multiclass: one weight per member, an intercept per class) or linear regression on
  [y_pred(LLM), y_pred(gbdt)] (regression; 90 % interval from the cross-validated holdout
  residuals' 5 / 95 % quantiles). Inputs are standardised, so a coefficient is "per SD of
  that member's score"; saved as JSON (no pickle).

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
from clinlm.io import read_parquet, write_json
from clinlm.methods import Method
from clinlm.methods.combiner import Combiner, combine_scores, fit_combiner, folds_of
from clinlm.methods.interface import (
    CLASSIFICATION,
    MULTICLASS,
    Run,
    bounded_answers,
    class_probs,
    labels_of,
    prob_columns,
    read_classes,
    save_classes,
    subsample,
    training_classes,
)

COMBINER_FILE, HOLDOUT_FILE = "combiner.json", "holdout_ids.json"


class StackModelConfig(ModelCommon):
    method: Literal["stack"]
    n_holdout: PositiveInt = 300   # training rows outside the LLM's, for the combiner
    folds: int = Field(5, ge=2)    # baseline out-of-fold parts of the holdout
    n_boot: PositiveInt = 1000     # bootstrap resamples for the LLM coefficient's interval


# ---------------------------------------------------------------- members

@dataclasses.dataclass
class Members:
    """The two fitted runs a stack combines (their run names and ``Run`` objects)."""

    llm_name: str
    llm: Run
    baseline_name: str
    baseline: Run


def resolve_members(run: Run, params: dict[str, Any]) -> Members:
    """The stack run's entry in ``runs.stack`` (by task and model) and its two member runs:
    for each role, a run of the same task whose model the entry names and whose method
    declares that role (:attr:`~clinlm.methods.interface.Method.stack_role`)."""
    from clinlm.methods import method_class, method_names
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
    for role in ("llm", "baseline"):
        allowed = tuple(m for m in method_names() if method_class(m).stack_role == role)
        model = spec.get(role)
        hits = [n for n, s in runs.items() if s["task"] == run.task and s["model"] == model]
        if not model or not hits:
            raise ValueError(f"runs.stack.{name}.{role}: {model!r} is no model of a "
                             f"{run.task} run (name the member's model, e.g. "
                             f"{'smollm2-sft' if role == 'llm' else 'gbdt'})")
        member = make_run(hits[0], params)
        if member.cfg["method"] not in allowed:
            raise ValueError(f"runs.stack.{name}.{role}: {hits[0]} is method "
                             f"{member.cfg['method']!r}; a stack's {role} must be one of {allowed}")
        found[role] = (hits[0], member)
    return Members(found["llm"][0], found["llm"][1], found["baseline"][0], found["baseline"][1])


def members_of(run: Run) -> Members:
    """The members :meth:`StackMethod.bind` gave ``run`` (from params, by ``make_run``)."""
    if set(run.members) != {"llm", "baseline"}:
        raise ValueError(f"{run.model}: a stack run needs its llm and baseline member runs; "
                         "build it with clinlm.runs.make_run (which binds them from params)")
    (llm_name, llm), (baseline_name, baseline) = run.members["llm"], run.members["baseline"]
    return Members(llm_name, llm, baseline_name, baseline)


def member_method(run: Run) -> Method:
    """The member's method (the registry's), refused when it cannot be a stack member."""
    from clinlm.methods import get_method
    method = get_method(run.cfg["method"])
    if method.stack_role is None:
        raise ValueError(f"{run.model}: a stack cannot hold a {method.name!r} member")
    return method


def load_member(run: Run) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The member's model loaded once per process (:func:`clinlm.methods.load_once`)."""
    from clinlm.methods import load_once
    member_method(run)
    return load_once(run)


def _member_scores(run: Run, df: pd.DataFrame,
                   predict: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                   labels: list[str] | None = None) -> np.ndarray:
    """The member's p_yes / y_pred for ``df``'s rows, in order, through its own predict (or
    ``predict``, its loaded form from :func:`load_member`); multiclass: its (n, k)
    probabilities of the stack's ``labels``."""
    out = (predict or (lambda d: member_method(run).predict(run, d)))(df)
    if list(out["id"].astype(str)) != list(df["id"].astype(str)):
        raise RuntimeError(f"{run.model}: predict returned rows out of order or missing")
    return member_values(run, out, labels)


def member_values(run: Run, out: pd.DataFrame, labels: list[str] | None = None) -> np.ndarray:
    """A member's scores in a predictions table: ``p_yes``, ``y_pred`` or, multiclass, the
    probabilities of ``labels`` (n, k). A class the member never trained on (a baseline fold
    short of a rare label) has probability 0; a class outside ``labels`` is an error."""
    if run.task_type != MULTICLASS:
        return out["p_yes" if run.task_type == CLASSIFICATION else "y_pred"].to_numpy(float)
    extra = sorted(set(labels_of(out.columns)) - set(labels or []))
    if extra:
        raise ValueError(f"{run.model}: classes {extra} are not the stack's {labels}; rerun "
                         "the member's train stage")
    return out.reindex(columns=prob_columns(labels or []), fill_value=0.0).to_numpy(float)


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
                 seed: int, labels: list[str] | None = None) -> np.ndarray:
    """Baseline scores on the holdout, each from a gbdt (the baseline run's own settings)
    fitted on every training row outside that holdout part (multiclass: the probabilities
    of ``labels``)."""
    y = _target(baseline.task_type, holdout, labels)
    out = np.empty((len(holdout), len(labels)) if labels else len(holdout))
    ids = train_df["id"].astype(str)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (_, part) in enumerate(folds_of(baseline.task_type, y, folds, seed)):
            fold_run = dataclasses.replace(baseline, model_dir=Path(tmp) / f"fold{k}",
                                           log_dir=None, work_dir=None)
            held = set(holdout["id"].astype(str).iloc[part])
            member_method(fold_run).train(fold_run, train_df[~ids.isin(held)])
            out[part] = _member_scores(fold_run, holdout.iloc[part], labels=labels)
    return out


def _target(task_type: str, df: pd.DataFrame, labels: list[str] | None = None) -> np.ndarray:
    """1/0 for Yes/No, the class index in ``labels`` (multiclass) or the number."""
    if task_type == CLASSIFICATION:
        return df["label"].eq("Yes").to_numpy(float)
    if task_type == MULTICLASS:
        return pd.Index(labels).get_indexer(df["label"].astype(str))
    return df["label"].to_numpy(float)


def fit_stack(run: Run, train_df: pd.DataFrame, members: Members) -> dict[str, Any]:
    """Fit the combiner on held-out training rows and save it; returns the train info."""
    cfg, t0 = run.cfg, time.time()
    test_path = run.data_dir / "test.parquet"
    test_ids = (set(read_parquet(test_path, columns=["id"])["id"].astype(str))
                if test_path.exists() else None)
    holdout, llm_ids = select_holdout(train_df, members.llm, cfg["n_holdout"], run.seed, test_ids)
    classes = training_classes(run, train_df) if run.task_type == MULTICLASS else None
    labels = classes["labels"] if classes else None
    y = _target(run.task_type, holdout, labels)
    llm = _member_scores(members.llm, holdout, labels=labels)
    baseline = baseline_oof(members.baseline, train_df, holdout, cfg["folds"], run.seed, labels)
    comb, report = fit_combiner(run.task_type, llm, baseline, y, cfg["folds"], run.seed, cfg["n_boot"])
    if classes:
        save_classes(run.model_dir, classes)
    write_json(run.model_dir / COMBINER_FILE, {
        **comb.to_json(), "llm": {"run": members.llm_name, "model": members.llm.model},
        "baseline": {"run": members.baseline_name, "model": members.baseline.model}})
    write_json(run.model_dir / HOLDOUT_FILE, sorted(holdout["id"].astype(str)))
    return {"method": "stack", "n_train": report["n_holdout"], "stack": {
        "llm": members.llm_name, "baseline": members.baseline_name,
        "n_llm_train_rows": len(llm_ids), **report}, "train_seconds": round(time.time() - t0, 2)}


def combine(run: Run, llm: np.ndarray, baseline: np.ndarray, ids: np.ndarray,
            comb: Combiner | None = None) -> pd.DataFrame:
    """The saved combiner (or ``comb``, already read) applied to the members' scores -> the
    method predict schema."""
    if comb is None:
        comb = Combiner.from_json(json.loads((run.model_dir / COMBINER_FILE).read_text()))
    s = combine_scores(comb, llm, baseline)
    if run.task_type == CLASSIFICATION:
        return pd.DataFrame({"id": ids, "p_yes": s})
    if run.task_type == MULTICLASS:
        return pd.DataFrame({"id": ids, **class_probs(read_classes(run.model_dir)["labels"], s)})
    lo, hi = comb.residual_q
    return pd.DataFrame({"id": ids, **bounded_answers(run.task_cfg, s, s + lo, s + hi)})


def _from_csv(run: Run, member: dict[str, str], ids: pd.Series,
              labels: list[str] | None = None) -> np.ndarray:
    from clinlm.paths import predictions_path
    path = predictions_path(run.task, member["model"])
    pred = pd.read_csv(path, dtype={"id": str}).set_index("id")
    missing = ids[~ids.isin(pred.index)]
    if len(missing):
        raise ValueError(f"{member['run']}: {path} lacks {len(missing)} row(s), e.g. "
                         f"{missing.iloc[0]!r}; rerun its predict stage")
    return member_values(run, pred.loc[ids], labels)


def stack_labels(run: Run) -> list[str] | None:
    """A multiclass stack's classes (its ``classes.json``); None for the other task types."""
    return read_classes(run.model_dir)["labels"] if run.task_type == MULTICLASS else None


def _is_test_split(run: Run, df: pd.DataFrame) -> bool:
    """True when every row of ``df`` is a row of the task's test split, unchanged."""
    path = run.data_dir / "test.parquet"
    if not path.exists():
        return False
    test = read_parquet(path).assign(id=lambda t: t["id"].astype(str)).set_index("id")
    d = df.assign(id=df["id"].astype(str)).set_index("id")
    cols = [c for c in d.columns if c in test.columns]
    if not d.index.isin(test.index).all() or not cols:
        return False
    return test.loc[d.index, cols].reset_index(drop=True).equals(d[cols].reset_index(drop=True))


class StackMethod(Method):
    """Logistic / linear / pooled combiner of an LLM run and the baseline, fitted on held-out
    rows. Its members come through the ``Run`` (:meth:`bind`), never from params directly."""

    name = "stack"
    config = StackModelConfig
    holds_members = True

    def bind(self, run: Run, params: dict[str, Any]) -> None:
        """``run.members``: the two member runs its ``runs.stack`` entry names."""
        m = resolve_members(run, params)
        run.members = {"llm": (m.llm_name, m.llm), "baseline": (m.baseline_name, m.baseline)}

    def check_ready(self, run: Run) -> None:
        """Both members are bound and of a kind a stack can hold."""
        m = members_of(run)
        member_method(m.llm), member_method(m.baseline)

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit on held-out training rows (module docstring); save ``combiner.json``."""
        return fit_stack(run, train_df, members_of(run))

    def _members(self, run: Run, saved: dict[str, Any]) -> dict[str, Run]:
        """The bound member runs, checked against the ones the saved combiner was fitted on."""
        m = members_of(run)
        runs = {"llm": (m.llm_name, m.llm), "baseline": (m.baseline_name, m.baseline)}
        for role, (name, _) in runs.items():
            if saved[role]["run"] != name:
                raise ValueError(f"{run.model}: fitted with {role} {saved[role]['run']!r}, but "
                                 f"params now name {name!r}: rerun its train stage")
        return {role: r for role, (_, r) in runs.items()}

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """The test split from the members' predictions CSVs; any other table through the
        members' own predict."""
        saved = json.loads((run.model_dir / COMBINER_FILE).read_text())
        ids = df["id"].astype(str).reset_index(drop=True)
        labels = stack_labels(run)
        if _is_test_split(run, df):
            llm, baseline = (_from_csv(run, saved[r], ids, labels) for r in ("llm", "baseline"))
        else:
            members = self._members(run, saved)
            llm, baseline = (_member_scores(members[r], df, labels=labels)
                         for r in ("llm", "baseline"))
        return combine(run, llm, baseline, ids.to_numpy())

    def load(self, run: Run) -> Callable[[pd.DataFrame], pd.DataFrame]:
        """The combiner and both members, each loaded ONCE (:func:`load_member`): what
        ``clinlm ask`` / ``serve`` keep, so a request never reloads a member; ``table ->
        predict rows``, every table through the loaded members (the same numbers as their
        predictions CSVs on the test split)."""
        saved = json.loads((run.model_dir / COMBINER_FILE).read_text())
        members = self._members(run, saved)
        combiner = Combiner.from_json(saved)
        predict = {r: load_member(m) for r, m in members.items()}
        labels = stack_labels(run)

        def score(df: pd.DataFrame) -> pd.DataFrame:
            ids = df["id"].astype(str).reset_index(drop=True)
            llm, baseline = (_member_scores(members[r], df, predict[r], labels)
                         for r in ("llm", "baseline"))
            return combine(run, llm, baseline, ids.to_numpy(), combiner)
        return score
