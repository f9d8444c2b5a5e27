"""A user's own table through the csv source: each problem a real export hit, one test each.

Shapes: a Chapman-like ECG-cart export (semicolon-separated, MALE/FEMALE, a rhythm label
column, no id) and a UCI-arrhythmia-like table (``?`` for missing, 0/1 sex, 200+ columns,
no id). Both are generated here, not the real files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.io import DataError, read_table
from clinlm.vascular.csvsource import CsvOptions, load_csv, resolve
from clinlm.vascular.statements import build_table
from clinlm.vascular.task import VascularAgeTask

TASK = VascularAgeTask()

CHAPMAN_COLUMNS = {
    "PatientAge": None,  # the target
    "Gender": {"feature": "sex", "codes": {"MALE": "M", "FEMALE": "F"}},
    "Rhythm": {"feature": "rhythm", "kind": "category",
               "codes": {"AFIB": "atrial fibrillation", "SB": "sinus bradycardia",
                         "SR": "sinus rhythm", "ST": "sinus tachycardia"}},
    "VentricularRate": {"feature": "hr", "unit": "bpm"},
    "AtrialRate": {"feature": "atrial_rate", "unit": "bpm"},
    "QRSDuration": {"feature": "qrs", "unit": "ms"},
    "QTInterval": {"feature": "qt", "unit": "ms"},
    "QTCorrected": {"feature": "qtc", "unit": "ms"},
    "RAxis": {"feature": "qrs_axis", "unit": "deg"},
    "TAxis": {"feature": "t_axis", "unit": "deg"},
    "QRSCount": {"feature": "qrs_count", "unit": "beats"},
    "QOnset": {"feature": "q_onset", "unit": "ms", "range": [0, 2000]},
    "QOffset": {"feature": "q_offset", "unit": "ms"},
    "TOffset": {"feature": "t_offset", "unit": "ms"},
}
CHAPMAN_MAPPING = {c: v for c, v in CHAPMAN_COLUMNS.items() if v is not None}


def chapman_like(n: int, seed: int = 0) -> str:
    """Semicolon-separated, MALE/FEMALE, rhythm labels, a FileName but no id column; atrial
    rates above 300 in flutter-like rows; age depends on QTc and heart rate."""
    rng = np.random.default_rng(seed)
    age = rng.integers(10, 90, n)  # children too: below the LLM answer range's 18
    hr = np.clip(rng.normal(75, 15, n), 35, 180).round()
    rhythm = rng.choice(["SR", "SB", "AFIB", "ST"], n, p=[0.5, 0.2, 0.2, 0.1])
    atrial = np.where(rhythm == "AFIB", rng.integers(250, 420, n), hr).astype(int)
    qtc = (400 + 0.8 * (age - 50) + rng.normal(0, 15, n)).round()
    lines = ["FileName;Rhythm;Beat;PatientAge;Gender;VentricularRate;AtrialRate;QRSDuration;"
             "QTInterval;QTCorrected;RAxis;TAxis;QRSCount;QOnset;QOffset;TOffset"]
    for i in range(n):
        lines.append(";".join(map(str, [
            f"MUSE_{i:05d}", rhythm[i], "NONE", age[i], rng.choice(["MALE", "FEMALE"]),
            int(hr[i]), atrial[i], int(rng.integers(70, 130)), int(qtc[i] - 20),
            int(qtc[i]), int(rng.integers(-40, 100)), int(rng.integers(-60, 120)),
            int(hr[i] // 6), int(rng.integers(200, 230)), int(rng.integers(250, 280)),
            int(rng.integers(400, 460))])))
    return "\n".join(lines) + "\n"


def uci_like(n: int, seed: int = 1) -> str:
    """Comma-separated, no header names beyond c0..c279 plus a few named ones, ``?`` for
    missing, sex 0 = male / 1 = female, no id."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    cols = {"age": age, "sex": rng.integers(0, 2, n),
            "height": rng.integers(150, 195, n), "weight": rng.integers(50, 110, n),
            "qrs_dur": rng.integers(70, 130, n), "pr": rng.integers(120, 220, n),
            "qt": (360 + 0.7 * age + rng.normal(0, 10, n)).round().astype(int),
            "T": rng.integers(-60, 120, n), "P": rng.integers(-30, 90, n),
            "QRS": rng.integers(-60, 120, n), "hr": rng.integers(50, 110, n)}
    for k in range(200):
        cols[f"c{k}"] = rng.normal(0, 1, n).round(2)
    df = pd.DataFrame(cols).astype(str)
    df.loc[rng.random(n) < 0.1, "T"] = "?"
    df.loc[rng.random(n) < 0.05, "height"] = "?"
    df["class"] = rng.integers(1, 17, n)
    return df.to_csv(index=False)


UCI_MAPPING = {
    "sex": {"feature": "sex", "codes": {"0": "M", "1": "F"}},
    "height": {"feature": "height", "unit": "cm"}, "weight": {"feature": "weight", "unit": "kg"},
    "qrs_dur": {"feature": "qrs", "unit": "ms"}, "pr": {"feature": "pr", "unit": "ms"},
    "qt": {"feature": "qt", "unit": "ms"}, "T": {"feature": "t_axis", "unit": "deg"},
    "P": {"feature": "p_axis", "unit": "deg"}, "QRS": {"feature": "qrs_axis", "unit": "deg"},
    "hr": {"feature": "hr", "unit": "bpm"},
}


def _opts(**kw) -> CsvOptions:
    return CsvOptions.model_validate(kw)


# --- 1. separators -------------------------------------------------------------------------

def test_semicolon_export_is_read_as_it_is(tmp_path: Path) -> None:
    p = tmp_path / "chapman.csv"
    p.write_text(chapman_like(30))
    t = load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge"))
    assert len(t) == 30 and t["vascular_age"].between(10, 90).all()
    for sep in ("\t", "|"):  # sniffed too; a forced separator wins
        q = tmp_path / "other.txt"
        q.write_text(chapman_like(5).replace(";", sep))
        assert len(load_csv(q, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge"))) == 5
    with pytest.raises(DataError, match="missing column"):
        load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge", separator=","))


# --- 2. every mapped column is used; the mapping, not the name, decides the meaning --------

def test_every_mapped_column_reaches_statement_and_features(tmp_path: Path) -> None:
    p = tmp_path / "chapman.csv"
    p.write_text(chapman_like(40))
    t = load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge"))
    assert [f["column"] for f in t.attrs["features"]] == list(CHAPMAN_MAPPING)
    b = build_table(t, "vascular_age")
    s = b["statement"].iloc[0]
    for words in ("heart rate", "QRS ", "QT ", "QTc", "QRS axis", "T axis", "atrial rate",
                  "qrs count", "q onset", "q offset", "t offset", "rhythm "):
        assert words in s, (words, s)
    for f in ("f_hr_bpm", "f_qrs_ms", "f_qt_ms", "f_qtc_ms", "f_qrs_axis_deg", "f_t_axis_deg",
              "f_atrial_rate", "f_qrs_count", "f_q_onset", "f_q_offset", "f_t_offset",
              "f_sex_male"):
        assert f in b.columns and b[f].notna().all(), f
    # a UCI column called "QRS" that is the QRS AXIS is read as the axis
    q = tmp_path / "uci.csv"
    q.write_text(uci_like(20))
    u = build_table(load_csv(q, _opts(columns=UCI_MAPPING, target_column="age")),
                    "vascular_age")
    assert "f_qrs_axis_deg" in u.columns and "f_p_axis_deg" in u.columns
    first = u["statement"].iloc[0]
    assert "QRS axis" in first and "P axis" in first


def test_mapping_errors_name_the_params_key() -> None:
    with pytest.raises(ValueError, match=r"columns\.QT\.unit: 'qt' is in ms; 'bpm'"):
        resolve({"QT": {"feature": "qt", "unit": "bpm"}})
    with pytest.raises(ValueError, match=r"columns\.B\.feature: 'qt' is already given by"):
        resolve({"A": {"feature": "qt"}, "B": {"feature": "qt_ms"}})
    with pytest.raises(ValueError, match=r"columns\.X\.feature: 'ST slope' is not a known"):
        resolve({"X": {"feature": "ST slope"}})
    with pytest.raises(ValueError, match=r"columns\.S\.codes: 'sex' values must mean"):
        resolve({"S": {"feature": "sex", "codes": {"0": "boy"}}})
    with pytest.raises(ValueError, match=r"columns\.Q\.range: low 5"):
        resolve({"Q": {"feature": "qt", "range": [5, 1]}})
    f = resolve({"H": {"feature": "height", "unit": "m"}})[0]
    assert (f.name, f.unit, f.factor) == ("height_cm", "cm", 100.0)


# --- 3. absent features: no all-empty column reaches gbdt ----------------------------------

def test_table_without_height_and_weight_has_no_empty_features(tmp_path: Path) -> None:
    p = tmp_path / "chapman.csv"
    p.write_text(chapman_like(30))
    b = build_table(load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge")),
                    "vascular_age")
    feats = [c for c in b.columns if c.startswith("f_")]
    assert not [c for c in feats if b[c].isna().all()]
    assert "f_height_cm" not in b.columns and "f_bmi" not in b.columns


# --- 4. sex coding is never guessed ------------------------------------------------------

def test_numeric_sex_needs_codes_and_codes_decide(tmp_path: Path) -> None:
    p = tmp_path / "uci.csv"
    p.write_text(uci_like(12))
    unmapped = {**UCI_MAPPING, "sex": {"feature": "sex"}}
    with pytest.raises(DataError, match=r"sex given as a number.*codes: \{0: M, 1: F\}"):
        load_csv(p, _opts(columns=unmapped, target_column="age"))
    t = load_csv(p, _opts(columns=UCI_MAPPING, target_column="age"))
    raw = pd.read_csv(p)
    assert (t["sex"] == np.where(raw["sex"] == 0, "M", "F")).all()
    b = build_table(t, "vascular_age")
    man = raw["sex"].to_numpy() == 0
    assert b.loc[man, "statement"].str.startswith("A man").all()
    assert b.loc[~man, "statement"].str.startswith("A woman").all()


# --- 5. no id, '?' as missing, every bad cell grouped, ranges overridable -----------------

def test_no_id_column_uses_row_numbers(tmp_path: Path, caplog) -> None:
    p = tmp_path / "uci.csv"
    p.write_text(uci_like(6))
    with caplog.at_level("INFO"):
        t = load_csv(p, _opts(columns=UCI_MAPPING, target_column="age"))
    assert t["id"].tolist() == ["1", "2", "3", "4", "5", "6"]
    assert t.attrs["id_from_row_number"] and "row numbers 1..6 are the ids" in caplog.text
    assert "features used: sex -> sex" in caplog.text


def test_question_marks_are_missing_and_bad_cells_are_grouped(tmp_path: Path) -> None:
    p = tmp_path / "uci.csv"
    p.write_text(uci_like(200))
    t = load_csv(p, _opts(columns=UCI_MAPPING, target_column="age"))
    assert t["t_axis_deg"].isna().sum() == (pd.read_csv(p, dtype=str)["T"] == "?").sum() > 0
    # without '?' as a marker: every bad cell, grouped by column, not only the first
    with pytest.raises(DataError) as ei:
        load_csv(p, _opts(columns=UCI_MAPPING, target_column="age", missing_values=[""]))
    msg = str(ei.value)
    n_t = (pd.read_csv(p, dtype=str)["T"] == "?").sum()
    n_h = (pd.read_csv(p, dtype=str)["height"] == "?").sum()
    assert f"{n_t + n_h} bad cell(s) in 2 column(s)" in msg
    assert f"column 'T': {n_t} cell(s) not a number" in msg
    assert f"column 'height': {n_h} cell(s) not a number" in msg
    assert "missing_values" in msg  # says which key fixes it
    first = min(np.flatnonzero(pd.read_csv(p, dtype=str)[c] == "?")[0] for c in ("T", "height"))
    assert ei.value.row == first + 1 and ei.value.column in ("T", "height")


def test_unit_ranges_are_overridable(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("age,pr,atrial\n50,0,350\n60,160,80\n")
    cols = {"pr": {"feature": "pr"}, "atrial": {"feature": "atrial_rate", "unit": "bpm"}}
    with pytest.raises(DataError, match=r"outside \(0, 3000\] ms.*widen "
                                        r"tasks\.vascular_age\.download\.columns\.pr\.range"):
        load_csv(p, _opts(columns=cols, target_column="age"))
    t = load_csv(p, _opts(columns={**cols, "pr": {"feature": "pr", "range": [0, 400]}},
                          target_column="age"))
    assert t["pr_ms"].tolist() == [0.0, 160.0] and t["atrial_rate"].tolist() == [350.0, 80.0]


# --- 6. categorical columns ------------------------------------------------------------------

def test_category_columns_are_text_and_one_hot(tmp_path: Path) -> None:
    p = tmp_path / "chapman.csv"
    p.write_text(chapman_like(60))
    raw = pd.read_csv(p, sep=";")
    b = build_table(load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge")),
                    "vascular_age")
    afib = (raw["Rhythm"] == "AFIB").to_numpy()
    assert b.loc[afib, "statement"].str.contains("rhythm atrial fibrillation").all()
    assert (b["f_rhythm__atrial_fibrillation"].to_numpy() == afib).all()
    capped = build_table(load_csv(p, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge",
                                          max_categories=2)), "vascular_age")
    assert len([c for c in capped.columns if c.startswith("f_rhythm__")]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text(chapman_like(5).replace(";SB;", ";XYZ;").replace(";SR;", ";XYZ;"))
    if "XYZ" in bad.read_text():
        with pytest.raises(DataError, match=r"value not in codes.*columns\.Rhythm\.codes"):
            load_csv(bad, _opts(columns=CHAPMAN_MAPPING, target_column="PatientAge"))


# --- 9. encodings --------------------------------------------------------------------------

def test_latin1_file_gets_a_hint_and_reads_with_the_key(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes("age;Rhythme;QT\n50;fibrillation auriculaire é;400\n".encode("latin-1"))
    cols = {"QT": {"feature": "qt"}, "Rhythme": {"feature": "rhythm", "kind": "category"}}
    with pytest.raises(DataError, match=r"not valid utf-8 text.*line 2.*csv_encoding: cp1252"):
        load_csv(p, _opts(columns=cols, target_column="age"))
    t = load_csv(p, _opts(columns=cols, target_column="age", encoding="latin-1"))
    assert t["rhythm"].iloc[0] == "fibrillation auriculaire é"
    with pytest.raises(DataError, match="unknown encoding"):
        read_table(p, encoding="klingon")


def test_header_only_table_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("age;QT\n")
    with pytest.raises(DataError, match="no data rows"):
        load_csv(p, _opts(columns={"QT": {"feature": "qt"}}, target_column="age"))


# --- the task: download info, predict CSVs and one-record questions ------------------------

def test_download_records_features_and_predict_csv_keeps_ids(tmp_path: Path) -> None:
    p = tmp_path / "chapman.csv"
    p.write_text(chapman_like(25))
    cfg = {"download": {"source": "csv", "csv_path": str(p), "csv_target_column": "PatientAge",
                        "columns": CHAPMAN_MAPPING}}
    info = TASK.download(cfg, 0, tmp_path / "raw")
    assert [f["column"] for f in info["features"]] == list(CHAPMAN_MAPPING)
    assert info["id_from_row_number"] is True and info["n_rows"] == 25
    assert TASK.input_files(cfg) == [p]
    table = TASK.build_table(cfg, tmp_path / "raw")
    new = TASK.table_from_csv(cfg, p)  # the same file for `clinlm predict`
    assert new["statement"].tolist() == table["statement"].tolist()
    rec = pd.read_csv(p, sep=";", dtype=str).iloc[0].to_dict()
    one = TASK.table_from_records(cfg, [{k: v for k, v in rec.items() if k in CHAPMAN_MAPPING}])
    assert one["statement"].iloc[0] == table["statement"].iloc[0] and math.isnan(
        one["label"].iloc[0])
    with pytest.raises(DataError, match=r"request, row 1, column 'Nope': unknown field"):
        TASK.table_from_records(cfg, [{"Nope": 1}])
    fields = TASK.input_fields(cfg)
    assert [f["name"] for f in fields] == list(CHAPMAN_MAPPING)
    assert fields[0]["choices"] == ["M", "F"] and fields[1]["kind"] == "text"


def test_records_for_the_synthetic_source() -> None:
    cfg = {"download": {"source": "synthetic"}}
    names = [f["name"] for f in TASK.input_fields(cfg)]
    assert {"age", "sex", "smoker", "qtc_ms"} <= set(names)
    t = TASK.table_from_records(cfg, [{"age": 61, "sex": "male", "qtc_ms": 430, "smoker": "yes"},
                                      {"sex": "F", "hr_bpm": 70}])
    assert t["statement"].iloc[0].startswith("A 61-year-old man.")
    assert "smoker" in t["statement"].iloc[0] and "QTc 430 ms" in t["statement"].iloc[0]
    assert t["statement"].iloc[1].startswith("A woman.")
    with pytest.raises(DataError, match=r"row 2, column 'hr_bpm': not a number"):
        TASK.table_from_records(cfg, [{"age": 50}, {"hr_bpm": "fast"}])
    with pytest.raises(DataError, match="no field given"):
        TASK.table_from_records(cfg, [{"age": None}])
    ptb = {"download": {"source": "ptbxl", "target_column": "age"}}
    assert "age" not in [f["name"] for f in TASK.input_fields(ptb)]
