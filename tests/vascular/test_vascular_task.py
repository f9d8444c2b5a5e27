"""clinlm.vascular.task: download -> subjects/signals files -> statements table -> images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.io import DataError
from clinlm.vascular.task import VascularAgeTask, render_images
from tests.conftest import SHARED

TASK = VascularAgeTask()

PTBXL = SHARED / "ptbxl-500"

_HEADER = "PatientID,Age,Gender,Height_m,Weight,HR,PR_s,QRS duration,QT,QTc,Axis,VascAge\n"
_ROWS = ("a1,54,M,1.78,82,68,0.160,94,398,423,35,60\n"
         "a2,61,female,,70,72,0.180,,410,,-20,70.5\n"
         "a3,47,F,1.62,58,80,0.140,88,380,425,50,44\n")
CSV_CFG = {"source": "csv", "id_column": "PatientID", "csv_target_column": "VascAge",
           "columns": {"Age": {"feature": "age"}, "Gender": {"feature": "sex"},
                       "Height_m": {"feature": "height", "unit": "m"},
                       "Weight": {"feature": "weight"}, "HR": {"feature": "hr"},
                       "PR_s": {"feature": "pr", "unit": "s"}, "QRS duration": {"feature": "qrs"},
                       "QT": {"feature": "qt"}, "QTc": {"feature": "qtc"},
                       "Axis": {"feature": "qrs_axis", "unit": "deg"}}}


def _check_schema(table: pd.DataFrame, n: int) -> None:
    assert list(table.columns[:4]) == ["id", "group", "statement", "label"]
    assert len(table) == n and table["id"].is_unique
    assert table["label"].dtype == np.float64
    feats = [c for c in table.columns[4:]]
    assert feats and all(c.startswith("f_") for c in feats)
    assert all(table[c].dtype == np.float64 for c in feats)
    for c in feats:  # no feature is the label in disguise
        both = table[c].notna() & table["label"].notna()
        assert not (both.any() and np.allclose(table.loc[both, c], table.loc[both, "label"])), c


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("raw_synthetic")
    info = TASK.download({"download": {"source": "synthetic", "n_synthetic": 40,
                                       "noise_sd": 4.0}}, 42, out)
    return out, info


def test_synthetic_download_files_and_info(synthetic: tuple[Path, dict]) -> None:
    out, info = synthetic
    assert info["data_source"] == "synthetic" and info["n_rows"] == 40
    assert info["noise_sd"] == 4.0
    assert info["noise_floor_mae"] == pytest.approx(4.0 * math.sqrt(2 / math.pi), abs=1e-3)
    assert info["target_column"] == "vascular_age" and info["fs"] == 100.0
    json.dumps(info)  # goes to download.json
    raw = pd.read_parquet(out / "subjects.parquet")
    assert len(raw) == 40 and {"vascular_age", "qtc_ms", "sdnn_ms"} <= set(raw.columns)
    sig = np.load(out / "signals.npy")
    assert sig.shape == (40, 1000, 12) and sig.dtype == np.float32
    meta = json.loads((out / "signals.json").read_text())
    assert meta["fs"] == 100.0 and meta["leads"][:3] == ["I", "II", "III"] and len(meta["leads"]) == 12
    assert not list(out.glob(".*"))  # no temp files left behind


def test_synthetic_build_table(synthetic: tuple[Path, dict]) -> None:
    out, _ = synthetic
    table = TASK.build_table({"statements": {}}, out)
    _check_schema(table, 40)
    raw = pd.read_parquet(out / "subjects.parquet")
    np.testing.assert_allclose(table["label"], raw["vascular_age"])
    assert table["label"].between(18, 110).all()
    assert {"f_age", "f_sbp_mmhg", "f_qtc_ms"} <= set(table.columns)
    assert not any("true_" in c or "framingham" in c or "shift" in c for c in table.columns)
    assert table["statement"].str.contains("year-old").all()
    assert "Risk factors:" in table["statement"].iloc[0] and "ECG:" in table["statement"].iloc[0]
    # statement options pass through; unknown ones are refused
    no_risk = TASK.build_table({"statements": {"include_risk_factors": False}}, out)
    assert not no_risk["statement"].str.contains("Risk factors").any()
    with pytest.raises(ValueError, match="unknown key"):
        TASK.build_table({"statements": {"history": True}}, out)


def test_render_images(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    from PIL import Image

    out, _ = synthetic
    small = tmp_path / "raw5"  # a 5-subject raw folder cut from the synthetic one
    small.mkdir()
    pd.read_parquet(out / "subjects.parquet").iloc[:5].to_parquet(small / "subjects.parquet")
    np.save(small / "signals.npy", np.load(out / "signals.npy")[:5])
    (small / "signals.json").write_text((out / "signals.json").read_text())
    info = render_images(small, tmp_path / "img", 320, 240)
    pngs = sorted((tmp_path / "img").glob("*.png"))
    assert info["n_images"] == 5 and len(pngs) == 5 and "seconds" not in info  # no clock in outputs
    assert pngs[0].name == "syn-000001.png"
    for p in pngs:
        assert Image.open(p).size == (320, 240)


def test_download_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown key"):
        TASK.download({"download": {"source": "synthetic", "n_rows": 5}}, 1, tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        TASK.download({"download": {"source": "kaggle"}}, 1, tmp_path)
    with pytest.raises(ValueError, match="csv_path is required"):
        TASK.download({"download": {"source": "csv"}}, 1, tmp_path)


def test_csv_source(tmp_path: Path) -> None:
    csv = tmp_path / "mine.csv"
    csv.write_text(_HEADER + _ROWS)
    raw = tmp_path / "raw"
    (raw / "signals.npy").parent.mkdir()
    (raw / "signals.npy").write_bytes(b"stale")  # from an earlier source
    info = TASK.download({"download": {**CSV_CFG, "csv_path": str(csv)}}, 1, raw)
    assert info["data_source"] == "csv" and info["n_rows"] == 3 and "noise_floor_mae" not in info
    assert not (raw / "signals.npy").exists()
    table = TASK.build_table({}, raw)
    _check_schema(table, 3)
    assert table["label"].tolist() == [60.0, 70.5, 44.0]
    assert table["statement"][0].startswith("A 54-year-old man, height 178 cm, weight 82 kg")
    assert "PR 160 ms" in table["statement"][0] and "QRS axis -20°" in table["statement"][1]
    # no recordings: the render stage draws nothing and says why, instead of failing the
    # whole `dvc repro` of a csv-sourced table
    info = render_images(raw, tmp_path / "img", 320, 240)
    assert info["n_images"] == 0 and "no ECG recordings" in info["skipped"]
    assert (tmp_path / "img").is_dir() and not list((tmp_path / "img").iterdir())

    # the same file through table_from_csv (clinlm predict): identical table
    task = {"download": {**CSV_CFG, "csv_path": str(csv)}, "statements": {}}
    pd.testing.assert_frame_equal(TASK.table_from_csv(task, csv), table)
    # without the target column: label NaN, statements unchanged
    unl = tmp_path / "new.csv"
    pd.read_csv(csv, dtype=str).drop(columns="VascAge").to_csv(unl, index=False)
    t2 = TASK.table_from_csv(task, unl)
    assert t2["label"].isna().all() and t2["statement"].tolist() == table["statement"].tolist()
    # a bad cell names the user's file (not a temp copy), row and column
    bad = tmp_path / "bad.csv"
    bad.write_text(_HEADER.replace(",VascAge", "") + "b1,50,M,1.70,70,800,0.15,90,400,410,30\n")
    with pytest.raises(DataError) as ei:
        TASK.table_from_csv(task, bad)
    assert (ei.value.path, ei.value.row, ei.value.column) == (str(bad), 1, "HR")
    assert str(ei.value).startswith(f"{bad}, row 1, column 'HR': outside [10, 700] bpm")


@pytest.mark.skipif(not (PTBXL / "ptbxl_database.csv").is_file(),
                    reason=f"real PTB-XL subset not found at {PTBXL} (see shared/data/README.md)")
def test_ptbxl_source(tmp_path: Path) -> None:
    info = TASK.download({"download": {"source": "ptbxl", "ptbxl_dir": str(PTBXL),
                                       "target_column": "age", "max_records": 20}}, 1, tmp_path)
    assert info["data_source"] == "ptbxl" and info["target_column"] == "target"
    n = info["n_rows"]
    assert 15 <= n <= 20 and n + info["n_dropped_missing_target"] == 20
    assert np.load(tmp_path / "signals.npy", mmap_mode="r").shape == (n, 1000, 12)
    table = TASK.build_table({}, tmp_path)
    _check_schema(table, n)
    raw = pd.read_parquet(tmp_path / "subjects.parquet")
    np.testing.assert_allclose(table["label"], raw["age"])
    # the target is age: it is in neither the statement nor the features
    assert "f_age" not in table.columns
    assert not table["statement"].str.contains("year-old").any()
    assert table["f_qrs_ms"].notna().mean() > 0.8
    with pytest.raises(ValueError, match="chronological age"):
        TASK.build_table({"statements": {"include_age": True}}, tmp_path)
