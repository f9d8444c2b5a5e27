"""The stack method: combiner math, holdout rules, and a tiny end-to-end run (sft + gbdt)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.combiner import (
    cross_validated,
    fit_weighted,
    holdout_metrics,
    llm_coefficient,
    member_features,
)
from clinlm.methods.interface import Run, subsample
from clinlm.methods.stack import (
    COMBINER_FILE,
    HOLDOUT_FILE,
    Members,
    StackMethod,
    fit_stack,
    resolve_members,
    select_holdout,
)
from tests.conftest import YES_NO_TASK, tiny_sft_cfg


def _members_case(n: int, seed: int = 0):
    """Two members, each seeing one of two independent causes of the outcome."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * a + 1.5 * b)))).astype(float)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    return y, sig(1.5 * a), sig(1.5 * b), rng.random(n)


def test_combiner_beats_each_member_with_complementary_signal():
    y, llm, base, _ = _members_case(600)
    x = member_features("classification", llm, base)
    cv = cross_validated("classification", x, y, 5, seed=0)
    m = holdout_metrics("classification", y, {"llm": llm, "base": base, "stack": cv})
    assert m["stack"]["roc_auc"] > max(m["llm"]["roc_auc"], m["base"]["roc_auc"]) + 0.05
    coef = llm_coefficient("classification", x, y, n_boot=300, seed=0)
    assert coef["ci95"][0] > 0 and coef["verdict"] == "adds information"


def test_a_pure_noise_member_gets_a_near_zero_coefficient():
    y, _, base, noise = _members_case(600, seed=1)
    coef = llm_coefficient("classification", member_features("classification", noise, base), y,
                           n_boot=300, seed=0)
    assert abs(coef["value"]) < 0.15 and coef["ci95"][0] < 0 < coef["ci95"][1]
    assert coef["verdict"].startswith("no added information")
    rng = np.random.default_rng(2)
    t = rng.normal(60, 20, 500)
    good = t + rng.normal(0, 5, 500)
    reg = llm_coefficient("regression", member_features("regression", rng.normal(60, 20, 500),
                                                        good), t, n_boot=300, seed=0)
    assert abs(reg["value"]) < 0.5 and reg["ci95"][0] < 0 < reg["ci95"][1]  # years per SD


def test_regression_combiner_averages_independent_errors():
    rng = np.random.default_rng(3)
    t = rng.normal(60, 20, 800)
    llm, base = t + rng.normal(0, 6, 800), t + rng.normal(0, 6, 800)
    x = member_features("regression", llm, base)
    cv = cross_validated("regression", x, t, 5, seed=0)
    m = holdout_metrics("regression", t, {"llm": llm, "base": base, "stack": cv})
    assert m["stack"]["mae"] < 0.8 * min(m["llm"]["mae"], m["base"]["mae"])


def test_batched_weighted_fit_equals_a_fit_on_repeated_rows():
    from sklearn.linear_model import LogisticRegression
    y, llm, base, _ = _members_case(200, seed=4)
    x = member_features("classification", llm, base)
    w = np.random.default_rng(0).multinomial(200, np.full(200, 1 / 200), size=2).astype(float)
    beta = fit_weighted("classification", x, y, w)
    for i in range(2):
        rows = np.repeat(np.arange(200), w[i].astype(int))
        ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[rows], y[rows])
        assert beta[i] == pytest.approx(np.r_[ref.intercept_, ref.coef_[0]], abs=1e-4)


def _table(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wait = rng.integers(0, 40, n)
    return pd.DataFrame({"id": [f"r{start + i}" for i in range(n)],
                         "statement": [f"Booked {w} days ahead." for w in wait],
                         "f_wait": wait, "f_age": rng.integers(18, 90, n),
                         "label": np.where(wait + rng.normal(0, 8, n) > 20, "Yes", "No")})


def test_holdout_excludes_the_llm_rows_and_the_test_split():
    train = _table(100, 0)
    llm = Run("noshow", "classification", "tiny", tiny_sft_cfg("x", max_train_rows=30), "m", ".",
              seed=7)
    holdout, llm_ids = select_holdout(train, llm, 40, seed=7)
    assert llm_ids == set(subsample(train, 30, 7, "classification")["id"])
    assert len(llm_ids) == 30 and 36 <= len(holdout) <= 44  # stratified: about n
    assert not set(holdout["id"]) & llm_ids
    with pytest.raises(ValueError, match="holdout rows are in the test split"):
        select_holdout(train, llm, 40, seed=7, test_ids=set(holdout["id"][:1]))
    llm.cfg["max_train_rows"] = None
    with pytest.raises(ValueError, match="whole training split"):
        select_holdout(train, llm, 40, seed=7)


@pytest.mark.slow
def test_end_to_end_tiny_sft_and_gbdt(tiny_llama, tmp_path, monkeypatch):
    """Real members: a tiny sft LLM and the gbdt, trained here; the stack is fitted on rows
    neither the LLM saw nor the test split holds, and predicts in the shared CSV schema."""
    from clinlm.io import write_csv, write_parquet
    from clinlm.methods.gbdt import GBDTMethod
    from clinlm.methods.sft import SFTMethod
    from clinlm.predict import predict_table

    monkeypatch.chdir(tmp_path)  # predictions CSVs live under ./data/predictions
    data = tmp_path / "data" / "processed" / "noshow"
    train, test = _table(90, 0), _table(30, 1, start=1000)
    write_parquet(data / "train.parquet", train)
    write_parquet(data / "test.parquet", test)
    llm = Run("noshow", "classification", "tiny",
              tiny_sft_cfg(tiny_llama, epochs=1, predict_batch_size=16, max_train_rows=24),
              tmp_path / "data/models/noshow/tiny", data, seed=3, task_cfg=YES_NO_TASK)
    base = Run("noshow", "classification", "gbdt", {"method": "gbdt", "hist_gbdt":
                                                    {"max_iter": 20}},
               tmp_path / "data/models/noshow/gbdt", data, seed=3)
    SFTMethod().train(llm, train)
    GBDTMethod().train(base, train)
    for member in (llm, base):
        write_csv(tmp_path / f"data/predictions/noshow/{member.model}.csv",
                  predict_table(member, test).sample(frac=1.0, random_state=0))  # any order
    run = Run("noshow", "classification", "stack",
              {"method": "stack", "n_holdout": 40, "folds": 3, "n_boot": 50},
              tmp_path / "data/models/noshow/stack", data, seed=3)
    info = fit_stack(run, train, Members("noshow-tiny", llm, "noshow-gbdt", base))

    holdout = set(json.loads((run.model_dir / HOLDOUT_FILE).read_text()))
    llm_rows = set(subsample(train, 24, 3, "classification")["id"])
    assert holdout and not holdout & llm_rows and not holdout & set(test["id"])
    st = info["stack"]
    assert st["n_llm_train_rows"] == 24 and st["n_holdout"] == len(holdout)
    assert set(st["holdout_metrics"]) == {"llm", "baseline", "stack (cross-validated)"}
    saved = json.loads((run.model_dir / COMBINER_FILE).read_text())
    assert saved["llm"] == {"run": "noshow-tiny", "model": "tiny"} and len(saved["coef"]) == 2

    out = predict_table(run, test)  # the test split: combined from the members' CSVs
    assert list(out.columns) == ["id", "y_true", "p_yes", "y_pred"]
    assert list(out["id"]) == list(test["id"]) and out["p_yes"].between(0, 1).all()
    assert set(out["y_pred"]) <= {"Yes", "No"}
    # another table goes through the members' own predict: the members come with the Run
    # (make_run binds them from params; the stack never reads params itself)
    fresh = test.iloc[:5].assign(id=lambda d: "new" + d["id"])
    with pytest.raises(ValueError, match="needs its llm and baseline member runs"):
        StackMethod().predict(run, fresh)
    run.members = {"llm": ("noshow-tiny", llm), "baseline": ("noshow-gbdt", base)}
    direct = StackMethod().predict(run, fresh)
    assert np.allclose(direct["p_yes"], out["p_yes"].iloc[:5], atol=1e-5)
    loaded = StackMethod().load(run)(fresh)  # ask/serve: each member loaded once
    assert np.allclose(loaded["p_yes"], direct["p_yes"], atol=1e-6)
    run.members["llm"] = ("noshow-other", llm)
    with pytest.raises(ValueError, match="fitted with llm 'noshow-tiny', but params now name "
                                         "'noshow-other'"):
        StackMethod().predict(run, fresh)


@pytest.mark.slow  # make_run checks the LLM library sections (imports transformers)
def test_resolve_members_names_a_wrong_member():
    from clinlm.params import load_params
    from tests.conftest import ROOT
    params = load_params(ROOT / "params.yaml")
    params["models"]["stack-t"] = {"method": "stack"}
    params["runs"]["stack"] = {"noshow-stack-t": {"task": "noshow", "model": "stack-t",
                                                  "llm": "gbdt", "baseline": "gbdt"}}
    run = Run("noshow", "classification", "stack-t", {"method": "stack"}, "m", ".")
    with pytest.raises(ValueError, match=r"runs.stack.noshow-stack-t.llm: noshow-gbdt is method 'gbdt'"):
        resolve_members(run, params)
    params["runs"]["stack"]["noshow-stack-t"]["llm"] = "smollm2-sft"
    m = resolve_members(run, params)
    assert (m.llm_name, m.baseline_name) == ("noshow-smollm2-sft", "noshow-gbdt")
    assert m.llm.cfg["max_train_rows"] == params["models"]["smollm2-sft"]["max_train_rows"]
