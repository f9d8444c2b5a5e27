"""No-show data: synthetic rows (clinlm.noshow.synthetic), validation (clinlm.noshow.schema)
and the csv/synthetic sources (clinlm.noshow.sources). Kaggle: tests/test_tasks_noshow_kaggle.py.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.io import DataError
from clinlm.noshow.schema import KAGGLE_COLUMNS, read_csv, validate
from clinlm.noshow.sources import KAGGLE_CSV_NAME, download
from clinlm.noshow.synthetic import generate_synthetic
from tests.conftest import SHARED

REAL_ZIP = SHARED / "noshow/KaggleV2-May-2016.csv.zip"
BINARY = ["Scholarship", "Hipertension", "Diabetes", "Alcoholism", "SMS_received"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _waits(df: pd.DataFrame) -> pd.Series:
    sched = pd.to_datetime(df["ScheduledDay"], utc=True)
    appt = pd.to_datetime(df["AppointmentDay"], utc=True)
    return (appt - sched.dt.normalize()).dt.days


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return generate_synthetic(20_000, seed=0)


@pytest.fixture
def small() -> pd.DataFrame:
    return generate_synthetic(8, seed=1)


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_schema_and_formats(synth: pd.DataFrame) -> None:
    assert list(synth.columns) == KAGGLE_COLUMNS
    assert len(synth) == 20_000
    assert synth.apply(lambda c: c.map(type).eq(str).all()).all()  # strings, as in the CSV
    assert synth["PatientId"].str.fullmatch(r"[1-9]\d{6,14}").all()
    assert synth["AppointmentID"].str.fullmatch(r"\d{7}").all()
    assert synth["AppointmentID"].is_unique
    assert synth["Gender"].isin(["F", "M"]).all()
    assert 0.6 < synth["Gender"].eq("F").mean() < 0.7
    assert synth["ScheduledDay"].str.fullmatch(r"2016-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    assert synth["AppointmentDay"].str.fullmatch(r"2016-0[456]-\d\dT00:00:00Z").all()
    sched = pd.to_datetime(synth["ScheduledDay"], utc=True)
    appt = pd.to_datetime(synth["AppointmentDay"], utc=True)
    assert appt.min() >= pd.Timestamp("2016-04-29", tz="UTC")
    assert appt.max() <= pd.Timestamp("2016-06-08", tz="UTC")
    assert (appt.dt.weekday < 5).all() and (sched.dt.weekday < 5).all()
    assert sched.dt.month.between(4, 6).mean() > 0.9
    assert synth["Age"].str.fullmatch(r"\d{1,3}").all()
    age = synth["Age"].astype(int)
    assert age.between(0, 115).all() and 30 <= age.median() <= 45
    hood = synth["Neighbourhood"]
    assert hood.eq(hood.str.upper()).all() and hood.nunique() > 50
    assert {"JARDIM CAMBURI", "RESISTÊNCIA", "ITARARÉ"} <= set(hood)
    for col in BINARY:
        assert synth[col].isin(["0", "1"]).all(), col
    assert synth["Handcap"].isin(["0", "1", "2", "3", "4"]).all()
    assert synth["No-show"].isin(["Yes", "No"]).all()
    wait = _waits(synth)
    assert (wait >= 0).all() and 0.3 < (wait == 0).mean() < 0.4
    sms = synth["SMS_received"].eq("1")
    assert not sms[wait <= 1].any() and sms[wait >= 4].mean() > 0.5


def test_synthetic_no_show_rate_and_effects(synth: pd.DataFrame) -> None:
    y = synth["No-show"].eq("Yes")
    assert 0.15 <= y.mean() <= 0.25
    wait = _waits(synth)
    same_day, week, long = y[wait == 0].mean(), y[wait.between(1, 7)].mean(), y[wait > 14].mean()
    assert same_day < 0.1 < week < long
    age = synth["Age"].astype(int)
    assert y[age.between(13, 30)].mean() > y[age >= 65].mean() + 0.04
    scholarship = synth["Scholarship"].eq("1")
    assert y[scholarship].mean() > y[~scholarship].mean()
    sms = synth["SMS_received"].eq("1")
    assert y[sms & (wait >= 4)].mean() < y[~sms & (wait >= 4)].mean()


def test_synthetic_repeat_patients_and_propensity(synth: pd.DataFrame) -> None:
    per_patient = synth["PatientId"].value_counts()
    assert (per_patient > 1).mean() > 0.25 and per_patient.max() >= 5
    # a patient keeps sex, age and neighbourhood across appointments
    fixed = synth.groupby("PatientId")[["Gender", "Age", "Neighbourhood"]].nunique()
    assert (fixed == 1).all().all()
    # earlier no-shows of the same patient predict later ones
    d = pd.DataFrame({"p": synth["PatientId"], "day": synth["AppointmentDay"],
                      "y": synth["No-show"].eq("Yes").astype(int)}).sort_values("day", kind="stable")
    prior = d.groupby("p")["y"].cumsum() - d["y"]
    later = d.groupby("p").cumcount() > 0
    assert d["y"][later & (prior > 0)].mean() > d["y"][later & (prior == 0)].mean() + 0.05


def test_synthetic_deterministic_per_seed() -> None:
    a = generate_synthetic(500, seed=3)
    assert a.equals(generate_synthetic(500, seed=3))
    assert not a.equals(generate_synthetic(500, seed=4))
    assert len(generate_synthetic(1, seed=0)) == 1
    with pytest.raises(ValueError):
        generate_synthetic(0, seed=0)


def test_synthetic_passes_validate(synth: pd.DataFrame) -> None:
    clean, counts = validate(synth, "synthetic")
    assert clean.equals(synth)
    assert counts == {"n_rows_in": 20_000, "n_rows": 20_000, "n_dropped_negative_age": 0,
                      "n_scheduled_after_appointment": 0}


# ---------------------------------------------------------------------------- validate

BAD_CELLS = [
    ("PatientId", "", "positive number"),
    ("PatientId", "abc", "positive number"),
    ("AppointmentID", "56x", "integer"),
    ("Gender", "X", "F or M"),
    ("ScheduledDay", "2016-02-30T10:00:00Z", "unparseable date"),
    ("ScheduledDay", "", "unparseable date"),
    ("AppointmentDay", "next monday", "unparseable date"),
    ("Age", "12.5", "integer"),
    ("Age", "twelve", "integer"),
    ("Age", "116", "above 115"),
    ("Neighbourhood", " ", "empty"),
    ("Handcap", "5", "0-4"),
    ("Handcap", "-1", "0-4"),
    ("No-show", "maybe", "Yes or No"),
    *[(col, "2", "0 or 1") for col in BINARY],
    ("SMS_received", "yes", "0 or 1"),
]


@pytest.mark.parametrize(("column", "value", "fragment"), BAD_CELLS)
def test_validate_errors_name_file_row_column(small: pd.DataFrame, column: str, value: str,
                                              fragment: str) -> None:
    bad = small.copy()
    bad.loc[4, column] = value  # data row 5
    bad.loc[6, column] = value  # a later bad row: the first one is reported
    with pytest.raises(DataError) as err:
        validate(bad, "data/bad.csv")
    msg = str(err.value)
    assert err.value.row == 5 and err.value.column == column
    assert msg.startswith(f"data/bad.csv, row 5, column {column!r}: ")
    assert fragment in msg and "2 bad row(s)" in msg


def test_validate_empty_table(small: pd.DataFrame) -> None:
    clean, counts = validate(small.iloc[:0], "empty.csv")
    assert list(clean.columns) == KAGGLE_COLUMNS and len(clean) == 0
    assert counts["n_rows"] == 0


def test_validate_missing_column(small: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=r"bad\.csv, column 'Diabetes': missing column"):
        validate(small.drop(columns="Diabetes"), "bad.csv")


def test_validate_duplicate_appointment_id(small: pd.DataFrame) -> None:
    bad = small.copy()
    bad.loc[3, "AppointmentID"] = bad.loc[1, "AppointmentID"]
    with pytest.raises(DataError, match=r"row 4, column 'AppointmentID': duplicate"):
        validate(bad, "bad.csv")


def test_validate_drops_negative_age(small: pd.DataFrame,
                                     caplog: pytest.LogCaptureFixture) -> None:
    df = small.copy()
    df.loc[[2, 5], "Age"] = ["-1", "-3"]
    with caplog.at_level(logging.INFO, logger="clinlm"):
        clean, counts = validate(df, "x.csv")
    assert counts["n_dropped_negative_age"] == 2 and counts["n_rows"] == 6
    assert clean.equals(small.drop(index=[2, 5]).reset_index(drop=True))
    assert "dropped 2 row(s) with a negative Age (first: row 3" in caplog.text


def test_validate_keeps_scheduled_after_appointment(small: pd.DataFrame) -> None:
    df = small.copy()
    next_day = pd.Timestamp(df.loc[0, "AppointmentDay"]) + pd.Timedelta(days=1, hours=9)
    df.loc[0, "ScheduledDay"] = next_day.strftime("%Y-%m-%dT%H:%M:%SZ")
    clean, counts = validate(df, "x.csv")
    assert counts["n_scheduled_after_appointment"] == 1 and clean.equals(df)


def test_validate_canonicalises_typed_frame(small: pd.DataFrame) -> None:
    typed = small.copy()
    typed["PatientId"] = typed["PatientId"].astype(float)  # 29872499824296.0
    typed["AppointmentID"] = typed["AppointmentID"].astype(np.int64)
    typed["Age"] = typed["Age"].astype(float)
    typed["Handcap"] = typed["Handcap"].astype(np.int64)
    typed["ScheduledDay"] = pd.to_datetime(typed["ScheduledDay"], utc=True)
    typed["AppointmentDay"] = pd.to_datetime(typed["AppointmentDay"]).dt.tz_localize(None)
    typed["extra"] = 1
    clean, _ = validate(typed, "typed")
    assert clean.equals(small)


def test_read_csv_row_is_data_line(tmp_path: Path, small: pd.DataFrame) -> None:
    bad = small.copy()
    bad.loc[2, "Gender"] = "U"
    path = tmp_path / "bad.csv"
    path.write_bytes(_csv_bytes(bad))
    with pytest.raises(DataError) as err:
        read_csv(path)
    assert err.value.row == 3 and str(path) in str(err.value)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[err.value.row].split(",")[2] == "U"  # header is line 0


def test_read_csv_zip(tmp_path: Path, small: pd.DataFrame) -> None:
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(KAGGLE_CSV_NAME, _csv_bytes(small))
    assert read_csv(path).equals(small)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a.csv", _csv_bytes(small))
        zf.writestr("b.csv", _csv_bytes(small))
    with pytest.raises(DataError, match="exactly one .csv"):
        read_csv(tmp_path / "two.zip")


# ---------------------------------------------------------------------------- download


def test_download_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "out" / "raw.csv"
    info = download({"source": "synthetic", "n_synthetic": 400}, seed=5, out_csv=out)
    data = out.read_bytes()
    assert info == {"data_source": "synthetic", "n_rows": 400, "n_dropped_negative_age": 0,
                    "n_scheduled_after_appointment": 0, "sha256": _sha256(data)}
    assert data == _csv_bytes(generate_synthetic(400, seed=5))
    assert [p.name for p in out.parent.iterdir()] == ["raw.csv"]  # no temp files left


@pytest.fixture
def real_zip() -> Path:
    if not REAL_ZIP.is_file():
        pytest.skip(f"real Kaggle file not found at {REAL_ZIP} (expects ../shared/data "
                    "beside the repository clone)")
    return REAL_ZIP


def test_csv_source_real_file(tmp_path: Path, real_zip: Path) -> None:
    out = tmp_path / "raw.csv"
    info = download({"source": "csv", "csv_path": str(real_zip)}, seed=0, out_csv=out)
    assert info["data_source"] == "csv"
    assert info["n_rows"] == 110_526
    assert info["n_dropped_negative_age"] == 1
    assert info["n_scheduled_after_appointment"] == 5
    assert info["sha256"] == _sha256(out.read_bytes())
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == KAGGLE_COLUMNS and len(df) == 110_526
    assert df["No-show"].value_counts().to_dict() == {"No": 88_207, "Yes": 22_319}
    assert (df["Age"].astype(int) >= 0).all()
    # same string formats: the output is the input minus the age -1 row, byte for byte
    with zipfile.ZipFile(real_zip) as zf:
        lines = zf.read(KAGGLE_CSV_NAME).decode("utf-8").splitlines(keepends=True)
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == [
        line for line in lines if line.split(",")[5] != "-1"]


def test_failed_download_leaves_no_output(tmp_path: Path, small: pd.DataFrame) -> None:
    bad = small.copy()
    bad.loc[1, "No-show"] = "Maybe"
    src = tmp_path / "src.csv"
    src.write_bytes(_csv_bytes(bad))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "raw.csv"
    with pytest.raises(DataError, match=r"src\.csv, row 2, column 'No-show'"):
        download({"source": "csv", "csv_path": str(src)}, seed=0, out_csv=out)
    with pytest.raises(ValueError, match="csv_path"):
        download({"source": "csv"}, seed=0, out_csv=out)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        download({"source": "csv", "csv_path": str(tmp_path / "missing.csv")}, 0, out)
    with pytest.raises(ValueError, match="unknown data source"):
        download({"source": "s3"}, seed=0, out_csv=out)
    assert list(out_dir.iterdir()) == []


def test_download_config_errors(tmp_path: Path) -> None:
    out = tmp_path / "raw.csv"
    with pytest.raises(ValueError, match=r"tasks\.noshow\.download\.n_synthtic: unknown key; "
                                         r"allowed: source, csv_path, csv_separator, csv_encoding, "
                                             r"n_synthetic"):
        download({"source": "synthetic", "n_synthtic": 300}, seed=0, out_csv=out)
    with pytest.raises(ValueError, match=r"n_synthetic: .*greater than or equal to 1"):
        download({"source": "synthetic", "n_synthetic": 0}, seed=0, out_csv=out)
    # null means the default; the source is case-insensitive as before
    info = download({"source": " Synthetic ", "n_synthetic": 50, "csv_path": None,
                     "kaggle_dataset": None}, seed=0, out_csv=out)
    assert info["data_source"] == "synthetic" and info["n_rows"] == 50


def test_header_only_csv_is_a_clear_error_at_download(tmp_path: Path) -> None:
    """A file with the header and no rows stops at download, naming the file, and writes
    nothing (it used to pass with n_rows 0 and crash later in statements)."""
    src = tmp_path / "empty.csv"
    src.write_text(",".join(KAGGLE_COLUMNS) + "\n")
    out = tmp_path / "raw" / "appointments.csv"
    with pytest.raises(DataError, match=r"empty\.csv.*no data rows"):
        download({"source": "csv", "csv_path": str(src)}, 0, out)
    assert not out.exists()
