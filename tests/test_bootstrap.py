"""Paired bootstrap intervals (clinlm.bootstrap): exact weighted metrics, pairing, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from clinlm.bootstrap import (
    compare_runs,
    percentile_interval,
    resample_weights,
    verdict,
    weighted_average_precision,
    weighted_mae,
    weighted_roc_auc,
)


def _clf(n: int, signal: float, seed: int = 0, ids=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    # rounded scores: many ties, as a small LLM's p_yes has
    p = np.round(1 / (1 + np.exp(-(signal * y + rng.normal(0, 1, n)))), 2)
    return pd.DataFrame({"id": ids if ids is not None else [f"r{i}" for i in range(n)],
                         "y_true": np.where(y, "Yes", "No"), "p_yes": p})


def test_weighted_metrics_equal_sklearn_with_sample_weights():
    df = _clf(300, 1.0)
    y, p = df["y_true"].eq("Yes").to_numpy(), df["p_yes"].to_numpy()
    w = next(resample_weights(len(df), 3, seed=1))
    auc, ap = weighted_roc_auc(p, y, w), weighted_average_precision(p, y, w)
    for i in range(3):
        assert auc[i] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w[i]), abs=1e-12)
        assert ap[i] == pytest.approx(skm.average_precision_score(y, p, sample_weight=w[i]),
                                      abs=1e-12)
    ones = np.ones((1, len(df)))
    assert weighted_roc_auc(p, y, ones)[0] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    t, e = np.arange(5.0), np.array([1.0, 1, 2, 3, 9])
    assert weighted_mae(t, e, ones[:, :5])[0] == pytest.approx(np.mean(np.abs(t - e)))


def test_interval_contains_the_point_estimate_and_shrinks_with_n():
    widths = []
    for n in (200, 3200):
        df = _clf(n, 1.0)
        r = compare_runs("classification", {"gbdt": df}, "gbdt", n_boot=400, seed=0)["gbdt"]
        for m in ("roc_auc", "pr_auc"):
            lo, hi = r["ci95"][m]
            assert lo < r["point"][m] < hi
        assert r["point"]["roc_auc"] == pytest.approx(
            skm.roc_auc_score(df["y_true"].eq("Yes"), df["p_yes"]))
        widths.append(r["ci95"]["roc_auc"][1] - r["ci95"]["roc_auc"][0])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 16x rows -> ~4x narrower


def test_a_model_against_itself_is_exactly_no_difference_and_a_better_one_is_better():
    base = _clf(400, 1.0)
    rng = np.random.default_rng(5)
    y = base["y_true"].eq("Yes").to_numpy()
    good = base.assign(p_yes=1 / (1 + np.exp(-(3.0 * y + rng.normal(0, 1, len(y))))))
    worse = base.assign(p_yes=rng.random(len(y)))
    res = compare_runs("classification", {"gbdt": base, "same": base.copy(), "good": good,
                                          "noise": worse}, "gbdt", n_boot=300, seed=3)
    assert "vs_baseline" not in res["gbdt"]
    same = res["same"]["vs_baseline"]["roc_auc"]
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0] and same["verdict"] == "no difference"
    assert res["good"]["vs_baseline"]["roc_auc"]["verdict"] == "better"
    assert res["good"]["vs_baseline"]["pr_auc"]["verdict"] == "better"
    assert res["noise"]["vs_baseline"]["roc_auc"]["verdict"] == "worse"


def test_regression_lower_mae_is_better():
    rng = np.random.default_rng(0)
    y = rng.normal(60, 20, 300)
    ids = [str(i) for i in range(300)]
    base = pd.DataFrame({"id": ids, "y_true": y, "y_pred": y + rng.normal(0, 8, 300)})
    good = base.assign(y_pred=y + rng.normal(0, 2, 300))
    res = compare_runs("regression", {"gbdt": base, "good": good}, "gbdt", n_boot=300, seed=0)
    v = res["good"]["vs_baseline"]["mae"]
    assert v["diff"] < 0 and v["ci95"][1] < 0 and v["verdict"] == "better"
    assert list(res["gbdt"]["ci95"]) == ["mae"]


def test_rows_are_matched_by_id_whatever_the_csv_order():
    base = _clf(300, 1.0)
    model = base.assign(p_yes=base["p_yes"] ** 0.5)  # same ranking, different scores
    shuffled = model.sample(frac=1.0, random_state=1)
    a = compare_runs("classification", {"gbdt": base, "m": model}, "gbdt", n_boot=200, seed=1)
    b = compare_runs("classification", {"gbdt": base, "m": shuffled}, "gbdt", n_boot=200, seed=1)
    assert a["m"] == b["m"]
    # a monotone transform ranks the rows the same: ROC-AUC identical in every resample
    assert a["m"]["vs_baseline"]["roc_auc"]["ci95"] == [0.0, 0.0]


def test_a_run_missing_rows_is_an_error_naming_the_run():
    base = _clf(50, 1.0)
    with pytest.raises(ValueError, match=r"smollm2-sft: .*1 row\(s\) missing.*'r7'"):
        compare_runs("classification", {"gbdt": base, "smollm2-sft": base.drop(index=7)}, "gbdt")
    with pytest.raises(ValueError, match="smollm2-head: duplicated id"):
        compare_runs("classification", {"gbdt": base,
                                        "smollm2-head": pd.concat([base, base.iloc[:1]])}, "gbdt")


def test_failed_rows_are_left_out_for_every_run_and_seed_fixes_the_result():
    base = _clf(200, 1.0)
    m = base.copy()
    m.loc[3, "p_yes"] = np.nan
    r1 = compare_runs("classification", {"gbdt": base, "m": m}, "gbdt", n_boot=100, seed=7)
    r2 = compare_runs("classification", {"gbdt": base, "m": m}, "gbdt", n_boot=100, seed=7)
    assert r1 == r2 and r1["m"]["n_rows"] == 199


def test_verdict_and_interval_helpers():
    assert verdict([-0.1, 0.2], True) == "no difference"
    assert verdict([0.01, 0.2], True) == "better"
    assert verdict([0.01, 0.2], False) == "worse"
    assert verdict([-2.0, -0.5], False) == "better"
    assert percentile_interval(np.arange(1001.0)) == pytest.approx([25.0, 975.0])
