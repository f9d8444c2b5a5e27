"""Tests of the vascular-age data side (offline: no real data needed)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.vascular import framingham
from clinlm.vascular.ecg import FEATURES, extract_features, extract_many
from clinlm.vascular.render import MAJOR, MINOR, draw_ecg, render_ecg, render_many
from clinlm.vascular.statements import build_table
from clinlm.vascular.synthetic import (
    ECG_AGEING,
    LATENT,
    ecg_ageing_shift,
    generate_cohort,
    noise_floor_mae,
)

# --------------------------------------------------------------------------------------------
# Framingham 2008
# --------------------------------------------------------------------------------------------


def test_framingham_hand_computed_man() -> None:
    # 55-year-old man, TC 213, HDL 50, untreated SBP 140, smoker, no diabetes
    lp = (3.06117 * math.log(55) + 1.12370 * math.log(213) - 0.93263 * math.log(50)
          + 1.93303 * math.log(140) + 0.65451)
    risk = 1 - 0.88936 ** math.exp(lp - 23.9802)
    ref = 1.12370 * math.log(180) - 0.93263 * math.log(45) + 1.93303 * math.log(125)
    va = math.exp((lp - ref) / 3.06117)
    args = (55, "M", 213, 50, 140, False, True, False)
    assert framingham.risk_10y(*args) == pytest.approx(risk, rel=1e-12)
    assert framingham.vascular_age(*args) == pytest.approx(va, rel=1e-12)
    assert 0.15 < risk < 0.3 and 65 < va < 85  # sanity: a smoker with SBP 140 is "older"


def test_framingham_hand_computed_treated_diabetic_woman() -> None:
    lp = (2.32888 * math.log(70) + 1.20904 * math.log(240) - 0.70833 * math.log(40)
          + 2.82263 * math.log(150) + 0.69154)
    risk = 1 - 0.95012 ** math.exp(lp - 26.1931)
    ref = 1.20904 * math.log(180) - 0.70833 * math.log(45) + 2.76157 * math.log(125)
    args = (70, "female", 240, 40, 150, 1, 0, 1)
    assert framingham.risk_10y(*args) == pytest.approx(risk, rel=1e-12)
    assert framingham.vascular_age(*args) == pytest.approx(math.exp((lp - ref) / 2.32888))


def test_framingham_paper_example() -> None:
    # D'Agostino 2008 worked example (woman, 61 y, TC 180, HDL 47, untreated SBP 124,
    # smoker, non-diabetic): 10-year risk 10.48 %.
    assert framingham.risk_10y(61, "F", 180, 47, 124, False, True, False) == pytest.approx(
        0.1048, abs=5e-4)


def test_framingham_normal_profile_is_chronological_age_and_vectorised() -> None:
    ages = np.array([30.0, 45.0, 60.0, 74.0])
    sexes = np.array(["M", "F", "male", "female"])
    va = framingham.vascular_age(ages, sexes, 180, 45, 125, False, False, False)
    np.testing.assert_allclose(va, ages, rtol=1e-12)
    # numeric sex (1 = male) gives the same as "M"/"F"
    np.testing.assert_allclose(
        framingham.risk_10y(ages, [1, 0, 1, 0], 200, 50, 130, True, 1, 0),
        framingham.risk_10y(ages, ["M", "F", "M", "F"], 200, 50, 130, True, 1, 0))
    # monotone: treatment, smoking, diabetes each raise vascular age
    base = framingham.vascular_age(50, "M", 200, 50, 130, False, False, False)
    for kw in ((True, False, False), (False, True, False), (False, False, True)):
        assert framingham.vascular_age(50, "M", 200, 50, 130, *kw) > base
    with pytest.raises(ValueError, match="sex"):
        framingham.risk_10y(50, "X", 200, 50, 130, False, False, False)


# --------------------------------------------------------------------------------------------
# Synthetic cohort (+ the extractor on simulated recordings)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, np.ndarray, float]:
    return generate_cohort(n=160, seed=7, noise_sd=3.0, progress=False)


def test_cohort_shapes_and_columns(cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    table, signals, fs = cohort
    assert fs == 100.0
    assert signals.shape == (160, 1000, 12) and signals.dtype == np.float32
    assert np.isfinite(signals).all()
    assert len(table) == 160 and table["id"].is_unique
    for col in ("id", "subject_id", "age", "sex", "height_cm", "weight_kg", "bmi", "sbp_mmhg",
                "bp_treated", "total_chol_mgdl", "hdl_mgdl", "smoker", "diabetes",
                "vascular_age", "vascular_age_framingham", "ecg_shift_years", *LATENT,
                *FEATURES):
        assert col in table.columns, col
    assert table["age"].between(30, 80).all()
    assert set(table["sex"]) == {"M", "F"}
    assert table["vascular_age"].between(18, 110).all()
    np.testing.assert_allclose(table["bmi"], table["weight_kg"] / (table["height_cm"] / 100) ** 2)
    assert table.attrs["noise_floor_mae"] == pytest.approx(3.0 * math.sqrt(2 / math.pi))


def test_cohort_is_deterministic() -> None:
    a, sa, _ = generate_cohort(n=25, seed=3, noise_sd=2.0, extract=False, progress=False)
    b, sb, _ = generate_cohort(n=25, seed=3, noise_sd=2.0, extract=False, progress=False)
    c, sc, _ = generate_cohort(n=25, seed=4, noise_sd=2.0, extract=False, progress=False)
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    assert not np.allclose(a["vascular_age"], c["vascular_age"])
    assert not np.array_equal(sa, sc)


def test_vascular_age_tracks_age_but_differs(cohort: tuple[pd.DataFrame, np.ndarray, float]
                                            ) -> None:
    t = cohort[0]
    r = np.corrcoef(t["age"], t["vascular_age"])[0, 1]
    assert 0.6 < r < 0.98
    assert (t["vascular_age"] - t["age"]).abs().mean() > 5


def test_ecg_markers_shift_vascular_age(cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    t = cohort[0]
    shift = ecg_ageing_shift(t[list(LATENT)])
    # the stored table is rounded to 6 decimals (the same bytes on every CPU)
    np.testing.assert_allclose(shift, t["ecg_shift_years"], rtol=0, atol=1e-6)
    assert shift.std() > 2.0  # the ECG moves the target by years, not days
    # documented coefficients, one subject by hand
    row = t.iloc[0]
    by_hand = (-8.0 * math.log(row["true_sdnn_ms"] / 40) + 0.10 * (row["true_qtc_ms"] - 410)
               + 0.08 * max(0.0, 30 - row["true_qrs_axis_deg"])
               + 0.10 * (row["true_hr_bpm"] - 70) + 0.15 * max(0.0, row["true_qrs_ms"] - 100))
    assert row["ecg_shift_years"] == pytest.approx(by_hand)
    assert set(ECG_AGEING) == {"sdnn", "qtc", "qrs_axis", "hr", "qrs"}
    # the target = Framingham + shift + noise (sd 3) where not clipped
    inside = t["vascular_age"].between(18.5, 109.5)
    resid = (t["vascular_age"] - t["vascular_age_framingham"] - t["ecg_shift_years"])[inside]
    assert abs(resid.mean()) < 1.0 and 2.2 < resid.std() < 3.8
    # lower HRV, longer QTc, leftward axis => older, other things equal
    base = pd.DataFrame({"true_sdnn_ms": [40.0], "true_qtc_ms": [410.0],
                         "true_qrs_axis_deg": [45.0], "true_hr_bpm": [70.0],
                         "true_qrs_ms": [90.0]})
    for col, val in (("true_sdnn_ms", 20.0), ("true_qtc_ms", 450.0),
                     ("true_qrs_axis_deg", -40.0), ("true_qrs_ms", 140.0)):
        older = base.assign(**{col: val})
        assert ecg_ageing_shift(older).iloc[0] > ecg_ageing_shift(base).iloc[0] + 2.0


def test_noise_floor() -> None:
    assert noise_floor_mae(4.0) == pytest.approx(4.0 * math.sqrt(2 / math.pi))
    assert noise_floor_mae(0.0) == 0.0


def test_extracted_features_match_simulation(cohort: tuple[pd.DataFrame, np.ndarray, float]
                                             ) -> None:
    t = cohort[0]
    hr_err = (t["hr_bpm"] - t["true_hr_bpm"]).abs()
    assert hr_err.notna().mean() > 0.98
    assert hr_err.median() < 2.5 and hr_err.quantile(0.9) < 6.0
    qrs = t["qrs_ms"].dropna()
    assert len(qrs) > 0.95 * len(t)
    assert qrs.between(60, 180).all()
    assert (t["qrs_ms"] - t["true_qrs_ms"]).abs().median() < 10
    assert np.corrcoef(t["qrs_ms"].fillna(qrs.median()), t["true_qrs_ms"])[0, 1] > 0.6
    ok = t[["qt_ms", "true_qt_ms"]].dropna()
    assert (ok["qt_ms"] - ok["true_qt_ms"]).abs().median() < 15
    ok = t[["qrs_axis_deg", "true_qrs_axis_deg"]].dropna()
    assert (ok["qrs_axis_deg"] - ok["true_qrs_axis_deg"]).abs().median() < 15
    ok = t[["pr_ms", "true_pr_ms"]].dropna()
    assert len(ok) > 0.9 * len(t) and (ok["pr_ms"] - ok["true_pr_ms"]).abs().median() < 15


def test_extractor_edge_cases(cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    signals = cohort[1]
    flat = extract_features(np.zeros((1000, 12)), 100)
    assert set(flat) == set(FEATURES) and flat["n_beats"] in (0.0, 1.0, 2.0)
    assert all(math.isnan(v) for k, v in flat.items() if k != "n_beats")
    short = extract_features(signals[0, :100], 100)
    assert all(math.isnan(v) for v in short.values())
    with pytest.raises(ValueError, match="12"):
        extract_features(np.zeros((1000, 8)), 100)
    holes = signals[0].astype(float)
    holes[100:110, 3] = np.nan
    f = extract_features(holes, 100)
    assert f["hr_bpm"] == pytest.approx(extract_features(signals[0], 100)["hr_bpm"], abs=1)
    df = extract_many(signals[:3], 100, progress=False, ids=["a", "b", "c"])
    assert list(df.index) == ["a", "b", "c"] and list(df.columns) == list(FEATURES)
    assert df.loc["a", "hr_bpm"] == pytest.approx(cohort[0].loc[0, "hr_bpm"])


# --------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------


def test_statements_synthetic(cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    t = cohort[0]
    b = build_table(t, "vascular_age")
    assert list(b.columns[:4]) == ["id", "group", "statement", "label"]
    assert all(c.startswith("f_") for c in b.columns[4:])
    np.testing.assert_allclose(b["label"], t["vascular_age"])
    assert (b["id"] == t["id"]).all() and (b["group"] == t["subject_id"]).all()
    for s in b["statement"]:
        for unit in ("-year-old", " cm", " kg", "BMI", "mmHg", "mg/dL", " bpm", " ms", "°"):
            assert unit in s, (unit, s)
        assert "nan" not in s.lower() and "vascular" not in s.lower()
    # the f_ columns carry what the statement says
    row, s = b.iloc[0], b["statement"].iloc[0]
    assert f"heart rate {int(row['f_hr_bpm'])} bpm" in s
    assert f"QRS {int(row['f_qrs_ms'])} ms" in s
    assert f"total cholesterol {int(row['f_total_chol_mgdl'])} mg/dL" in s
    assert f"{int(row['f_age'])}-year-old" in s
    assert not any(c.startswith("f_true") or "framingham" in c for c in b.columns)
    assert "f_vascular_age" not in b.columns


def test_statements_missing_values_and_age_target() -> None:
    raw = pd.DataFrame({
        "id": [1, 2, 3], "subject_id": ["p1", "p1", "p2"], "age": [54.0, None, 40.0],
        "sex": ["M", None, "F"], "height_cm": [178.0, None, None],
        "weight_kg": [82.0, 70.0, None], "bmi": [25.88, None, 31.0],
        "hr_bpm": [68.2, None, 90.0], "qrs_ms": [94.0, None, None], "qtc_ms": [423.4, None, None],
        "qrs_axis_deg": [35.0, None, -0.2], "target": [55.0, 60.0, 41.0],
    })
    b = build_table(raw, "target")
    s = b["statement"].tolist()
    assert s[0] == ("A 54-year-old man, height 178 cm, weight 82 kg (BMI 25.9). "
                    "ECG: heart rate 68 bpm, QRS 94 ms, QTc 423 ms, QRS axis 35°.")
    assert s[1] == "A person, weight 70 kg."
    assert s[2] == "A 40-year-old woman, BMI 31.0. ECG: heart rate 90 bpm, QRS axis 0°."
    assert b["group"].tolist() == ["p1", "p1", "p2"]
    # target = chronological age (PTB-XL): age never in the statement or the features
    raw2 = raw.assign(age=[54.0, 61.0, 40.0])
    b2 = build_table(raw2, "age")
    assert "f_age" not in b2.columns
    assert not b2["statement"].str.contains("year").any()
    assert b2["label"].tolist() == [54.0, 61.0, 40.0]
    raw2.attrs["target_column"] = "age"
    raw2["target"] = raw2["age"]
    assert "f_age" not in build_table(raw2, "target").columns
    with pytest.raises(ValueError, match="age"):
        build_table(raw2, "target", include_age=True)


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------


def _is(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (img == np.array(colour, np.uint8)).all(axis=-1)


def test_render_grid_trace_and_size(tmp_path: Path,
                                    cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    from PIL import Image

    path = render_ecg(cohort[1][0], 100, tmp_path / "ecg.png", 512, 384)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (384, 512, 3)
    pink = _is(img, MINOR) | _is(img, MAJOR)
    assert pink.mean() > 0.3  # the paper
    # major (5 mm) grid lines: full-height columns of MAJOR colour, evenly spaced
    major_cols = np.flatnonzero(_is(img, MAJOR).mean(axis=0) > 0.5)
    gaps = np.diff(major_cols)
    px_per_mm = 512 / 262
    assert len(major_cols) >= 45
    assert np.median(gaps) == pytest.approx(5 * px_per_mm, abs=1.0)
    dark = (img.sum(axis=-1) < 150)
    assert 0.01 < dark.mean() < 0.2  # the traces
    assert dark[int(0.75 * 384):].mean() > 0.005  # the rhythm strip is drawn
    big = draw_ecg(cohort[1][0], 100, 1024, 768)
    assert big.size == (1024, 768)


def test_render_atomic_write(tmp_path: Path, cohort: tuple[pd.DataFrame, np.ndarray, float],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    path = tmp_path / "x.png"
    path.write_bytes(b"old")

    def boom(self: Image.Image, fp: Path, *a: object, **k: object) -> None:
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        render_ecg(cohort[1][0], 100, path)
    assert path.read_bytes() == b"old"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left
    with pytest.raises(ValueError, match="suffix"):
        render_ecg(cohort[1][0], 100, tmp_path / "x.gif")


def test_render_rate(tmp_path: Path, cohort: tuple[pd.DataFrame, np.ndarray, float]) -> None:
    sig = cohort[1][:30]
    paths = [tmp_path / f"{i}.png" for i in range(30)]
    t0 = time.perf_counter()
    out = render_many(sig, 100, paths, 512, 384, progress=False)
    rate = len(out) / (time.perf_counter() - t0)
    print(f"render rate: {rate:.1f} images/s at 512x384")
    assert all(p.is_file() for p in paths)
    assert rate > 10  # aim >= 20/s; lenient on a shared 2-core box


def test_extract_many_pool_matches_serial(cohort: tuple[pd.DataFrame, np.ndarray, float]
                                          ) -> None:
    sig = cohort[1][:4]
    serial = extract_many(sig, 100, processes=1, progress=False)
    pooled = extract_many(sig, 100, processes=2, progress=False)
    pd.testing.assert_frame_equal(serial, pooled)
