"""The ECG feature extractor and the PTB-XL loader on REAL recordings (PTB-XL 1.0, 100 Hz).

Uses ``../shared/data/ptbxl-500`` (the first 500 PTB-XL records); skipped when absent.
"""

from __future__ import annotations

import ast
import time

import numpy as np
import pandas as pd
import pytest

from clinlm.io import DataError
from clinlm.vascular.ecg import FEATURES, add_features, extract_features
from clinlm.vascular.ptbxl import load_ptbxl
from clinlm.vascular.statements import build_table
from tests.conftest import SHARED

PTBXL = SHARED / "ptbxl-500"
pytestmark = pytest.mark.skipif(
    not (PTBXL / "ptbxl_database.csv").is_file(),
    reason=f"real PTB-XL subset not found at {PTBXL} (see shared/data/README.md)")

N_CHECK = 150  # records read for the extractor checks (about 95 are normal sinus rhythm)


@pytest.fixture(scope="module")
def first50() -> tuple[pd.DataFrame, np.ndarray, float]:
    return load_ptbxl(PTBXL, max_records=50, progress=False)


@pytest.fixture(scope="module")
def normal_sinus() -> tuple[pd.DataFrame, np.ndarray, float]:
    """Records (of the first N_CHECK) coded NORM and SR, with features and timing."""
    table, signals, fs = load_ptbxl(PTBXL, max_records=N_CHECK, progress=False)
    codes = table["scp_codes"].map(ast.literal_eval)
    keep = codes.map(lambda c: "NORM" in c and "SR" in c).to_numpy()
    table, signals = table[keep].reset_index(drop=True), signals[keep]
    t0 = time.perf_counter()
    table = add_features(table, signals, fs, progress=False)
    per_rec = (time.perf_counter() - t0) / len(table)
    print(f"\nPTB-XL extraction: {1000 * per_rec:.1f} ms/record over {len(table)} records; "
          f"QRS median {table['qrs_ms'].median():.0f} ms "
          f"(5-95 %: {table['qrs_ms'].quantile(0.05):.0f}-{table['qrs_ms'].quantile(0.95):.0f})")
    return table, signals, fs


def _independent_hr(sig: np.ndarray, fs: float) -> float:
    """HR from a simple, independent QRS count: peaks of the 12-lead 5-30 Hz slope energy."""
    from scipy.signal import butter, find_peaks, sosfiltfilt

    x = sosfiltfilt(butter(2, [5, 30], btype="band", fs=fs, output="sos"), sig, axis=0)
    e = np.convolve(np.abs(np.diff(x, axis=0)).sum(axis=1), np.ones(5) / 5, "same")
    pk, _ = find_peaks(e, height=0.35 * np.percentile(e, 99), distance=int(0.3 * fs))
    return 60.0 * (len(pk) - 1) / ((pk[-1] - pk[0]) / fs)


def test_load_first_50(first50: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    table, signals, fs = first50
    db = pd.read_csv(PTBXL / "ptbxl_database.csv").sort_values("ecg_id").head(50)
    n_missing = int(db["age"].isna().sum())
    assert fs == 100.0
    assert len(table) == 50 - n_missing == signals.shape[0]
    assert table.attrs["n_dropped_missing_target"] == n_missing
    assert signals.shape[1:] == (1000, 12) and signals.dtype == np.float32
    assert table["id"].tolist() == db.loc[db["age"].notna(), "ecg_id"].astype(str).tolist()
    assert table["target"].equals(table["age"]) and table["target"].notna().all()
    assert set(table["sex"]) <= {"M", "F"}
    both = table["height_cm"].notna() & table["weight_kg"].notna()
    assert (table["bmi"].notna() == both).all()
    np.testing.assert_allclose(table.loc[both, "bmi"], table.loc[both, "weight_kg"]
                               / (table.loc[both, "height_cm"] / 100) ** 2)
    # sex: 0 = male in PTB-XL, so "M" rows should be taller on average
    h = table.dropna(subset=["height_cm"]).groupby("sex")["height_cm"].mean()
    if {"M", "F"} <= set(h.index):
        assert h["M"] > h["F"]
    # lead order: aVR is roughly -(I + II)/2 on real recordings (Goldberger)
    s = signals[0].astype(float)
    assert np.corrcoef(s[:, 3], -(s[:, 0] + s[:, 1]) / 2)[0, 1] > 0.9


def test_missing_target_dropped_and_counted() -> None:
    with pytest.raises(DataError, match="no target column"):
        load_ptbxl(PTBXL, target_column="nope", max_records=3, progress=False)
    table, _, _ = load_ptbxl(PTBXL, target_column="height", max_records=20, progress=False)
    db = pd.read_csv(PTBXL / "ptbxl_database.csv").sort_values("ecg_id").head(20)
    assert table.attrs["n_dropped_missing_target"] == db["height"].isna().sum()
    assert (table["target"] == table["height_cm"]).all()


def test_normal_sinus_hr_and_qrs_physiological(
        normal_sinus: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    t = normal_sinus[0]
    assert len(t) >= 60
    assert t["hr_bpm"].between(40, 150).all(), t.loc[~t["hr_bpm"].between(40, 150), "id"]
    assert t["qrs_ms"].between(60, 140).all(), t.loc[~t["qrs_ms"].between(60, 140), "id"]
    assert 75 <= t["qrs_ms"].median() <= 100
    # other intervals: physiological on normal records (allowing a few outliers)
    assert t["pr_ms"].between(100, 240).mean() > 0.95
    assert t["qtc_ms"].between(330, 470).mean() > 0.95
    assert t["qrs_axis_deg"].between(-45, 110).mean() > 0.95
    assert t["sdnn_ms"].notna().mean() > 0.95 and (t["sdnn_ms"].dropna() >= 0).all()


def test_hr_consistent_with_rr_and_independent_count(
        normal_sinus: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    t, signals, fs = normal_sinus
    np.testing.assert_allclose(t["hr_bpm"], 60000.0 / t["rr_ms"])
    indep = np.array([_independent_hr(s.astype(float), fs) for s in signals])
    diff = np.abs(t["hr_bpm"].to_numpy() - indep)
    assert np.median(diff) < 2.0 and (diff < 6.0).all(), t.loc[diff >= 6.0, "id"]


def test_wide_qrs_on_bundle_branch_block() -> None:
    """The extractor is not capped at 100 ms: complete bundle-branch blocks read wide."""
    table, signals, fs = load_ptbxl(PTBXL, progress=False)
    codes = table["scp_codes"].map(ast.literal_eval)
    bbb = codes.map(lambda c: "CLBBB" in c or "CRBBB" in c).to_numpy()
    if bbb.sum() < 2:
        pytest.skip("fewer than 2 bundle-branch blocks among the records checked")
    qrs = [extract_features(s, fs)["qrs_ms"] for s in signals[bbb]]
    assert np.nanmedian(qrs) >= 115


def test_statement_never_contains_age_target(
        normal_sinus: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    t = normal_sinus[0]
    assert t.attrs["target_column"] == "age"  # kept through add_features
    b = build_table(t, "target")
    assert "f_age" not in b.columns
    plain = t.copy()
    plain.attrs = {}  # even without the loader's note, a target equal to age is detected
    assert "f_age" not in build_table(plain, "target").columns
    np.testing.assert_allclose(b["label"], t["age"])
    for s in b["statement"]:
        assert "year" not in s and "age" not in s.lower()
        assert " bpm" in s and " ms" in s and s.startswith("A ")
    assert {"f_hr_bpm", "f_qrs_ms", "f_sex_male"} <= set(b.columns)
    assert set(FEATURES) - {"rr_ms", "n_beats"} <= {c[2:] for c in b.columns}


def test_prominence_method_runs_and_is_capped(
        normal_sinus: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    """The neurokit2 'prominence' comparison path: physiological but bounded near 100 ms."""
    t, signals, fs = normal_sinus
    f = [extract_features(s, fs, method="prominence") for s in signals[:8]]
    qrs = np.array([x["qrs_ms"] for x in f])
    assert np.isfinite(qrs).all() and (qrs <= 104).all() and (qrs >= 50).all()
    assert [x["hr_bpm"] for x in f] == pytest.approx(t["hr_bpm"].iloc[:8].tolist())
    with pytest.raises(ValueError, match="method"):
        extract_features(signals[0], fs, method="dwt")
