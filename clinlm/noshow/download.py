"""Download step of the no-show task: get the Kaggle "Medical Appointment No Shows" table.

Sources (``cfg["source"]``):

- ``kaggle``: the dataset ``joniarroba/noshowappointments`` through the official
  ``kagglehub`` client. Credentials come only from the environment or Kaggle's own files
  (see :func:`has_kaggle_credentials`); they are never logged.
- ``csv``: a local ``.csv`` file, or a ``.zip`` holding one CSV (the Kaggle download).
- ``synthetic``: generated rows with the exact Kaggle schema and value formats
  (:func:`generate_synthetic`), so the pipeline runs without any download.
- ``auto``: ``kaggle`` when credentials are available, otherwise ``synthetic``.

Whatever the source, the table is validated (:func:`validate`) and written as a CSV in the
Kaggle format: the same 14 columns in the same order, the same string formats
(``2016-04-29T18:38:08Z``, ``0``/``1`` flags, ``Yes``/``No`` label), UTF-8, ``\\n`` line ends.
For the real Kaggle file the output is byte-for-byte the input minus the dropped rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from clinlm.io import DataError, atomic_path

logger = logging.getLogger(__name__)

KAGGLE_DATASET = "joniarroba/noshowappointments"
#: Name of the CSV inside the Kaggle dataset.
KAGGLE_CSV_NAME = "KaggleV2-May-2016.csv"
#: The 14 columns of the Kaggle file, in order (the misspellings are the real names).
KAGGLE_COLUMNS: list[str] = [
    "PatientId", "AppointmentID", "Gender", "ScheduledDay", "AppointmentDay", "Age",
    "Neighbourhood", "Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap",
    "SMS_received", "No-show",
]
SOURCES: tuple[str, ...] = ("auto", "kaggle", "csv", "synthetic")
DEFAULT_N_SYNTHETIC = 20_000
MAX_AGE = 115  # the oldest age in the real file; anything above is an error
BINARY_COLUMNS: list[str] = ["Scholarship", "Hipertension", "Diabetes", "Alcoholism",
                             "SMS_received"]
LABEL_COLUMN = "No-show"

# --------------------------------------------------------------------------------------
# Distributions measured on the real file (110,527 rows), used by generate_synthetic.
# --------------------------------------------------------------------------------------

#: Neighbourhoods of Vitória with their appointment counts in the real file (>= 100 rows).
_NEIGHBOURHOODS: tuple[tuple[str, int], ...] = (
    ("JARDIM CAMBURI", 7717), ("MARIA ORTIZ", 5805), ("RESISTÊNCIA", 4431),
    ("JARDIM DA PENHA", 3877), ("ITARARÉ", 3514), ("CENTRO", 3334), ("TABUAZEIRO", 3132),
    ("SANTA MARTHA", 3131), ("JESUS DE NAZARETH", 2853), ("BONFIM", 2773),
    ("SANTO ANTÔNIO", 2746), ("SANTO ANDRÉ", 2571), ("CARATOÍRA", 2565), ("JABOUR", 2509),
    ("SÃO PEDRO", 2448), ("ILHA DO PRÍNCIPE", 2266), ("NOVA PALESTINA", 2264),
    ("ANDORINHAS", 2262), ("DA PENHA", 2217), ("ROMÃO", 2215), ("GURIGICA", 2018),
    ("SÃO JOSÉ", 1977), ("BELA VISTA", 1907), ("MARUÍPE", 1902), ("FORTE SÃO JOÃO", 1889),
    ("ILHA DE SANTA MARIA", 1885), ("SÃO CRISTÓVÃO", 1836), ("REDENÇÃO", 1553),
    ("SÃO BENEDITO", 1439), ("JOANA D\u00b4ARC", 1427), ("CRUZAMENTO", 1398),
    ("CONSOLAÇÃO", 1376), ("SANTA TEREZA", 1332), ("PRAIA DO SUÁ", 1288),
    ("SANTOS DUMONT", 1276), ("GRANDE VITÓRIA", 1071), ("ILHA DAS CAIEIRAS", 1071),
    ("INHANGUETÁ", 1057), ("PRAIA DO CANTO", 1035), ("BENTO FERREIRA", 858),
    ("VILA RUBIM", 851), ("CONQUISTA", 849), ("DO QUADRO", 849), ("REPÚBLICA", 835),
    ("MONTE BELO", 824), ("PARQUE MOSCOSO", 802), ("GOIABEIRAS", 700), ("JUCUTUQUARA", 694),
    ("FONTE GRANDE", 682), ("MATA DA PRAIA", 644), ("DO CABRAL", 560), ("SANTOS REIS", 547),
    ("ESTRELINHA", 538), ("SANTA CLARA", 506), ("SOLON BORGES", 469), ("PIEDADE", 452),
    ("SANTA CECÍLIA", 448), ("SANTA LÚCIA", 438), ("SANTA LUÍZA", 428),
    ("BARRO VERMELHO", 423), ("DO MOSCOSO", 413), ("MÁRIO CYPRESTE", 371), ("BOA VISTA", 312),
    ("COMDUSA", 310), ("DE LOURDES", 305), ("ARIOVALDO FAVALESSA", 282),
    ("ANTÔNIO HONÓRIO", 271), ("FRADINHOS", 258), ("ENSEADA DO SUÁ", 235),
    ("SANTA HELENA", 178), ("HORTO", 175), ("UNIVERSITÁRIO", 152), ("SEGURANÇA DO LAR", 145),
    ("NAZARETH", 135),
)
#: Appointments per patient: 1..15 as counted in the real file; 16..30 share the rest.
_APPTS_PER_PATIENT = np.arange(1, 31)
_APPTS_PER_PATIENT_W = np.array(
    [37920, 13895, 5500, 2367, 1119, 553, 306, 202, 104, 85, 63, 36, 35, 22, 15]
    + [8] * 15, dtype=float)
#: Age bins [lo, hi) with their row counts in the real file (age 0 = babies).
_AGE_EDGES = np.array([0, 1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80,
                       85, 90, 95, 100, 103])
_AGE_W = np.array([3539, 6703, 7233, 5782, 7154, 6856, 6843, 7515, 7656, 6851, 7358, 8107,
                   7756, 6771, 5105, 3361, 2573, 1928, 1018, 347, 59, 6], dtype=float)
#: Digits of a PatientId (per distinct patient in the real file).
_PID_DIGITS = np.arange(7, 16)
_PID_DIGITS_W = np.array([1, 13, 79, 517, 2245, 7214, 16006, 22092, 14132], dtype=float)
#: Hour of day at which appointments were scheduled, 6..21.
_SCHED_HOURS = np.arange(6, 22)
_SCHED_HOURS_W = np.array([1578, 19213, 15349, 12823, 11056, 8462, 5422, 9036, 9127, 8079,
                           5542, 2909, 1340, 488, 100, 3], dtype=float)
#: Waiting days when not same-day: bins [lo, hi] and their row counts in the real file.
_WAIT_LO = np.array([1, 2, 4, 8, 15, 31, 61])
_WAIT_HI = np.array([1, 3, 7, 14, 30, 60, 120])
_WAIT_W = np.array([5213, 9462, 17510, 12025, 17371, 8283, 2095], dtype=float)
_SAME_DAY_SHARE = 0.349
#: The real file's appointment days: weekdays 2016-04-29..2016-06-08 without 23, 26, 27 May.
_APPOINTMENT_DAYS = np.array(
    [d for d in pd.bdate_range("2016-04-29", "2016-06-08").strftime("%Y-%m-%d")
     if d not in ("2016-05-23", "2016-05-26", "2016-05-27")], dtype="datetime64[D]")
_NO_SHOW_RATE = 0.202  # 22,319 / 110,527 in the real file


def generate_synthetic(n_rows: int, seed: int) -> pd.DataFrame:
    """Generate ``n_rows`` synthetic appointments with the exact Kaggle schema and formats.

    Every column is a string formatted as in the real CSV (``PatientId`` an integer id,
    ``ScheduledDay`` ``2016-04-29T18:38:08Z``, ``AppointmentDay`` at midnight, flags ``0``/``1``,
    ``Handcap`` ``0``-``4``, ``No-show`` ``Yes``/``No``). Distributions follow the real file:
    ages, sex by age, comorbidities by age, neighbourhood shares, appointments on weekdays
    between 2016-04-29 and 2016-06-08, about 35 % booked the same day and a long tail of
    waits (a few percent of bookings therefore fall before April), SMS reminders almost only
    for waits of 3 days or more, and repeat patients (about 1.8 appointments per patient).

    About 20 % no-shows, drawn from a logistic model: same-day bookings rarely miss, longer
    waits miss more, teenagers and young adults more than the elderly, a scholarship
    (Bolsa Família) slightly more, an SMS reminder slightly less, plus a latent propensity
    per patient (so a patient's earlier no-shows predict the later ones) and a small effect
    per neighbourhood. The intercept is calibrated so the expected rate is 20.2 %.

    Deterministic for a given ``(n_rows, seed)``; randomness only from
    ``np.random.default_rng(seed)``. No quirks: no negative ages, never scheduled after the
    appointment day, so :func:`validate` keeps every row.
    """
    if int(n_rows) < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows!r}")
    n_rows = int(n_rows)
    rng = np.random.default_rng(seed)

    # Patients and how many appointments each has.
    p_counts = _APPTS_PER_PATIENT_W / _APPTS_PER_PATIENT_W.sum()
    batch = n_rows // 1.6 + 16
    counts = rng.choice(_APPTS_PER_PATIENT, size=int(batch), p=p_counts)
    while counts.sum() < n_rows:
        counts = np.concatenate([counts, rng.choice(_APPTS_PER_PATIENT, size=int(batch),
                                                    p=p_counts)])
    n_pat = int(np.searchsorted(np.cumsum(counts), n_rows)) + 1
    counts = counts[:n_pat]
    counts[-1] -= counts.sum() - n_rows

    age_bin = rng.choice(len(_AGE_W), size=n_pat, p=_AGE_W / _AGE_W.sum())
    age = rng.integers(_AGE_EDGES[age_bin], _AGE_EDGES[age_bin + 1])
    female = rng.random(n_pat) < np.interp(age, [0, 12, 13, 18, 19, 40, 60, 115],
                                           [0.48, 0.48, 0.60, 0.65, 0.72, 0.70, 0.67, 0.67])
    hyp = rng.random(n_pat) < np.interp(age, [0, 18, 30, 40, 50, 60, 70, 80, 115],
                                        [0.0, 0.005, 0.03, 0.10, 0.25, 0.42, 0.55, 0.62, 0.62])
    p_diab = np.where(hyp, 0.30, np.interp(age, [0, 18, 40, 60, 115],
                                           [0.002, 0.005, 0.015, 0.035, 0.04]))
    diab = rng.random(n_pat) < p_diab
    p_alc = np.interp(age, [0, 15, 18, 30, 45, 60, 80, 115],
                      [0.0, 0.0, 0.005, 0.02, 0.06, 0.05, 0.02, 0.01])
    alc = rng.random(n_pat) < p_alc * np.where(female, 0.6, 1.7)
    scholarship = rng.random(n_pat) < np.interp(age, [0, 18, 30, 40, 60, 115],
                                                [0.11, 0.13, 0.15, 0.12, 0.05, 0.02])
    handcap_any = rng.random(n_pat) < np.interp(age, [0, 18, 40, 60, 90, 115],
                                                [0.009, 0.012, 0.018, 0.035, 0.05, 0.05])
    handcap = np.where(handcap_any, rng.choice([1, 2, 3, 4], size=n_pat,
                                               p=[0.905, 0.085, 0.008, 0.002]), 0)
    hood_w = np.array([c for _, c in _NEIGHBOURHOODS], dtype=float)
    hood = rng.choice(len(hood_w), size=n_pat, p=hood_w / hood_w.sum())
    hood_effect = rng.normal(0.0, 0.15, size=len(hood_w))
    propensity = rng.normal(0.0, 1.2, size=n_pat)
    digits = rng.choice(_PID_DIGITS, size=n_pat, p=_PID_DIGITS_W / _PID_DIGITS_W.sum())
    patient_id = _unique_ids(rng, 10 ** (digits - 1), 10 ** digits)

    # Appointments.
    pat = np.repeat(np.arange(n_pat), counts)
    appt_day = rng.choice(_APPOINTMENT_DAYS, size=n_rows)
    wait_bin = rng.choice(len(_WAIT_W), size=n_rows, p=_WAIT_W / _WAIT_W.sum())
    wait = np.where(rng.random(n_rows) < _SAME_DAY_SHARE, 0,
                    rng.integers(_WAIT_LO[wait_bin], _WAIT_HI[wait_bin] + 1))
    weekday = ((appt_day - wait.astype("timedelta64[D]")).astype(np.int64) + 3) % 7  # Mon=0
    wait = wait + np.select([weekday == 5, weekday == 6], [1, 2], 0)  # book on weekdays
    sched_day = appt_day - wait.astype("timedelta64[D]")
    seconds = (rng.choice(_SCHED_HOURS, size=n_rows, p=_SCHED_HOURS_W / _SCHED_HOURS_W.sum())
               * 3600 + rng.integers(0, 3600, size=n_rows))
    sched = sched_day.astype("datetime64[s]") + seconds.astype("timedelta64[s]")
    p_sms = np.select([wait <= 1, wait == 2, wait == 3], [0.0, 0.03, 0.2], 0.6)
    sms = rng.random(n_rows) < p_sms

    # No-show: logistic model, intercept calibrated to the real rate.
    age_r = age[pat]
    logit = (
        np.where(wait == 0, -2.0, 0.32 * np.log1p(wait))
        + np.interp(age_r, [0, 5, 10, 18, 25, 35, 45, 55, 65, 75, 90, 115],
                    [-0.15, -0.05, 0.1, 0.35, 0.3, 0.1, 0.0, -0.2, -0.4, -0.42, -0.35, -0.35])
        + 0.2 * scholarship[pat] - 0.3 * sms - 0.05 * hyp[pat] - 0.05 * diab[pat]
        + propensity[pat] + hood_effect[hood[pat]]
    )
    logit = logit + _calibrate_intercept(logit, _NO_SHOW_RATE)
    no_show = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))

    # Appointment ids grow with the booking time, as in the real file.
    appointment_id = np.empty(n_rows, dtype=np.int64)
    appointment_id[np.argsort(sched, kind="stable")] = (
        5_030_000 + np.cumsum(rng.integers(1, 8, size=n_rows)))

    order = rng.permutation(n_rows)
    pat, sched, appt_day = pat[order], sched[order], appt_day[order]
    sms, no_show, appointment_id = sms[order], no_show[order], appointment_id[order]
    hood_names = np.array([name for name, _ in _NEIGHBOURHOODS], dtype=object)
    columns = {
        "PatientId": patient_id[pat].astype(str),
        "AppointmentID": appointment_id.astype(str),
        "Gender": np.where(female[pat], "F", "M"),
        "ScheduledDay": _iso_utc(sched),
        "AppointmentDay": _iso_utc(appt_day.astype("datetime64[s]")),
        "Age": age[pat].astype(str),
        "Neighbourhood": hood_names[hood[pat]],
        "Scholarship": scholarship[pat].astype(np.int64).astype(str),
        "Hipertension": hyp[pat].astype(np.int64).astype(str),
        "Diabetes": diab[pat].astype(np.int64).astype(str),
        "Alcoholism": alc[pat].astype(np.int64).astype(str),
        "Handcap": handcap[pat].astype(str),
        "SMS_received": sms.astype(np.int64).astype(str),
        "No-show": np.where(no_show, "Yes", "No"),
    }
    return pd.DataFrame({c: np.asarray(v).astype(object) for c, v in columns.items()})


def _unique_ids(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Draw one integer in ``[low[i], high[i])`` per element, redrawing until all are unique."""
    ids = rng.integers(low, high)
    while True:
        _, first = np.unique(ids, return_index=True)
        dup = np.ones(ids.size, dtype=bool)
        dup[first] = False
        if not dup.any():
            return ids
        ids[dup] = rng.integers(low[dup], high[dup])


def _calibrate_intercept(logit: np.ndarray, target: float) -> float:
    """Bisection for the shift ``b`` with ``mean(sigmoid(logit + b)) == target``."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) > target:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def _iso_utc(values: np.ndarray) -> np.ndarray:
    """Format ``datetime64`` values (UTC) as ``YYYY-MM-DDTHH:MM:SSZ`` strings."""
    text = np.datetime_as_string(np.asarray(values, dtype="datetime64[s]"), unit="s")
    return np.char.add(text, "Z").astype(object)


# --------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Kaggle-format ``.csv``, or a ``.zip`` holding exactly one CSV, and validate it.

    All columns are read as strings (no NA conversion), then :func:`validate` checks them
    and returns the cleaned table: the 14 :data:`KAGGLE_COLUMNS` as strings in the Kaggle
    formats, rows with a negative age dropped. Raises ``FileNotFoundError`` or
    :class:`~clinlm.io.DataError`.
    """
    path = Path(path)
    df, _ = validate(_read_raw(path), path)
    return df


def _read_raw(path: Path) -> pd.DataFrame:
    """Read every cell of a ``.csv`` (or the single CSV in a ``.zip``) as a string."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [i.filename for i in zf.infolist()
                       if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
            csvs = [m for m in members if m.lower().endswith(".csv")]
            if len(csvs) != 1:
                raise DataError(path, f"expected exactly one .csv inside the zip, found "
                                      f"{csvs or members}")
            with zf.open(csvs[0]) as f:
                return _parse_csv(f, path)
    with open(path, "rb") as f:
        return _parse_csv(f, path)


def _parse_csv(f: IO[bytes], path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(f, dtype=str, keep_default_na=False, na_filter=False,
                           encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(path, f"not a readable UTF-8 CSV: {e}") from e


def validate(df: pd.DataFrame, path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, int]]:
    """Check a Kaggle-schema table; return it cleaned plus counts of the documented drops.

    ``path`` only names the source in messages. Cells may be strings (as read from the CSV)
    or already typed values (e.g. ``PatientId`` as the float ``29872499824296.0``).

    Errors raise :class:`~clinlm.io.DataError` naming the file, the column and the *first*
    bad row, where ``row`` is the 1-based data row number (the header line is not counted:
    row 1 is the first line after the header; for a frame, the first row by position).
    The message also gives the bad value and how many rows fail that check. Checked, in
    column order: all 14 columns present; ``PatientId`` a positive number; ``AppointmentID``
    a positive, unique integer; ``Gender`` ``F``/``M``; ``ScheduledDay``/``AppointmentDay``
    parseable ISO-8601 datetimes (a time without zone is taken as UTC); ``Age`` an integer
    <= 115; ``Neighbourhood`` not empty; the flags ``0``/``1``; ``Handcap`` an integer 0-4;
    ``No-show`` ``Yes``/``No``.

    Documented rules (logged, counted, not errors):

    - rows with a negative ``Age`` are dropped (the real file has one age -1)
      -> ``n_dropped_negative_age``;
    - rows whose ``ScheduledDay`` date is after the ``AppointmentDay`` date are kept (the
      statements stage clips waiting days at 0) -> ``n_scheduled_after_appointment``
      (5 in the real file).

    Returns ``(frame, counts)``: the frame has exactly :data:`KAGGLE_COLUMNS` (extra columns
    are dropped with a warning), all cells strings in the canonical Kaggle formats
    (integer ids and numbers without ``.0``, datetimes as ``2016-04-29T18:38:08Z``) and a
    fresh 0-based index; ``counts`` holds ``n_rows_in``, ``n_rows``,
    ``n_dropped_negative_age`` and ``n_scheduled_after_appointment``.
    """
    missing = [c for c in KAGGLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected the Kaggle columns "
                              f"{KAGGLE_COLUMNS}", column=missing[0])
    extra = [str(c) for c in df.columns if c not in KAGGLE_COLUMNS]
    if extra:
        logger.warning("%s: ignoring extra column(s) %s", path, extra)
    if df.columns.duplicated().any():
        dup = str(df.columns[df.columns.duplicated()][0])
        raise DataError(path, "duplicate column name", column=dup)

    text = {c: _as_text(df[c]) for c in KAGGLE_COLUMNS}
    out: dict[str, pd.Series] = {}

    pid = text["PatientId"]
    pid_num = pd.to_numeric(pid, errors="coerce")
    _check(~(pid_num > 0), pid, path, "PatientId", "must be a positive number")
    out["PatientId"] = _canonical_integers(pid, pid_num)

    appt_id = _integers(text["AppointmentID"], path, "AppointmentID", "must be an integer")
    _check(appt_id <= 0, text["AppointmentID"], path, "AppointmentID", "must be positive")
    _check(appt_id.duplicated(), text["AppointmentID"], path, "AppointmentID",
           "duplicate appointment id")
    out["AppointmentID"] = appt_id.astype(str)

    _check(~text["Gender"].isin(["F", "M"]), text["Gender"], path, "Gender", "must be F or M")
    out["Gender"] = text["Gender"]

    dates = {}
    for col in ("ScheduledDay", "AppointmentDay"):
        dates[col] = pd.to_datetime(text[col], errors="coerce", utc=True, format="ISO8601")
        _check(dates[col].isna(), text[col], path, col,
               "unparseable date (expected ISO 8601 like 2016-04-29T18:38:08Z)")
        out[col] = pd.Series(_iso_utc(dates[col].dt.tz_convert(None).to_numpy()))

    age = _integers(text["Age"], path, "Age", "Age must be an integer")
    _check(age > MAX_AGE, text["Age"], path, "Age", f"Age above {MAX_AGE}")
    out["Age"] = age.astype(str)

    hood = text["Neighbourhood"]
    _check(hood.eq(""), hood, path, "Neighbourhood", "empty neighbourhood")
    out["Neighbourhood"] = hood

    for col in ("Scholarship", "Hipertension", "Diabetes", "Alcoholism"):
        out[col] = _flags(text[col], path, col)
    handcap = _integers(text["Handcap"], path, "Handcap", "Handcap must be an integer 0-4")
    _check((handcap < 0) | (handcap > 4), text["Handcap"], path, "Handcap",
           "Handcap must be an integer 0-4")
    out["Handcap"] = handcap.astype(str)
    out["SMS_received"] = _flags(text["SMS_received"], path, "SMS_received")

    label = text[LABEL_COLUMN]
    _check(~label.isin(["Yes", "No"]), label, path, LABEL_COLUMN, "label must be Yes or No")
    out[LABEL_COLUMN] = label

    clean = pd.DataFrame(out)[KAGGLE_COLUMNS]
    negative = (age < 0).to_numpy()
    n_negative = int(negative.sum())
    if n_negative:
        logger.info("%s: dropped %d row(s) with a negative Age (first: row %d, Age %s)",
                    path, n_negative, np.flatnonzero(negative)[0] + 1,
                    text["Age"].iloc[np.flatnonzero(negative)[0]])
    after = (dates["ScheduledDay"].dt.normalize() > dates["AppointmentDay"].dt.normalize())
    after = after.to_numpy() & ~negative
    n_after = int(after.sum())
    if n_after:
        logger.info("%s: kept %d row(s) scheduled after the appointment day (first: row %d); "
                    "waiting days are clipped at 0 downstream",
                    path, n_after, np.flatnonzero(after)[0] + 1)
    clean = clean.loc[~negative].reset_index(drop=True)
    counts = {"n_rows_in": len(df), "n_rows": len(clean),
              "n_dropped_negative_age": n_negative, "n_scheduled_after_appointment": n_after}
    return clean, counts


def _as_text(col: pd.Series) -> pd.Series:
    """Cells as stripped strings with a 0-based index; missing values become ``""``."""
    if pd.api.types.is_datetime64_any_dtype(col):
        utc = pd.to_datetime(col, utc=True).dt.tz_convert(None)
        text = pd.Series(_iso_utc(utc.to_numpy()), index=col.index).where(utc.notna(), "")
    else:
        cells = col.astype(object).where(col.notna(), "").to_numpy().astype(str)
        text = pd.Series(np.strings.strip(cells).astype(object))
    return text.reset_index(drop=True)


def _check(bad: pd.Series | np.ndarray, values: pd.Series, path: str | os.PathLike,
           column: str, message: str) -> None:
    """Raise a DataError for the first True in ``bad`` (vectorized check, first index)."""
    idx = np.flatnonzero(np.asarray(bad, dtype=bool))
    if idx.size:
        first = int(idx[0])
        raise DataError(path, f"{message}: got {values.iloc[first]!r} "
                              f"({idx.size} bad row(s) in all)", row=first + 1, column=column)


def _integers(values: pd.Series, path: str | os.PathLike, column: str,
              message: str) -> pd.Series:
    """Parse integer cells (``62``, ``62.0``) or raise naming the first non-integer row."""
    num = pd.to_numeric(values, errors="coerce").astype(float)
    ok = np.isfinite(num) & (num == np.floor(num)) & (num.abs() < 2 ** 53)
    _check(~ok, values, path, column, message)
    return num.astype(np.int64)


def _flags(values: pd.Series, path: str | os.PathLike, column: str) -> pd.Series:
    """Parse 0/1 cells (``1`` or ``1.0``; ``True`` is not accepted) to ``"0"``/``"1"``."""
    if values.isin(["0", "1"]).all():  # fast path: the Kaggle format
        return values
    num = pd.to_numeric(values, errors="coerce")
    _check(~num.isin([0, 1]), values, path, column, f"{column} must be 0 or 1")
    return num.astype(np.int64).astype(str)


def _canonical_integers(text: pd.Series, num: pd.Series) -> pd.Series:
    """``29872499824296.0``/``2.98724998242960E+13`` -> ``29872499824296``; others unchanged."""
    plain = text.str.fullmatch(r"\d+")
    fixable = ~plain & (num == np.floor(num)) & (num < 2 ** 53)
    out = text.copy()
    if fixable.any():
        out[fixable] = num[fixable].astype(np.int64).astype(str)
    return out


# --------------------------------------------------------------------------------------
# Source selection and Kaggle download
# --------------------------------------------------------------------------------------


def has_kaggle_credentials(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``kagglehub`` would find Kaggle credentials in ``env`` or Kaggle's files.

    Mirrors what kagglehub 1.0 / kagglesdk accept: ``KAGGLE_API_TOKEN`` (a token or the
    path of a file holding one); in a Kaggle notebook the ``KAGGLE_API_V1_TOKEN`` file;
    ``~/.kaggle/access_token`` (or ``access_token.txt``); ``KAGGLE_USERNAME`` together with
    ``KAGGLE_KEY``; ``kaggle.json`` (with ``username`` and ``key``) in ``KAGGLE_CONFIG_DIR``
    or ``~/.kaggle``. ``~`` is ``env["HOME"]`` when set. Colab secrets are not looked at.
    Only presence is checked; nothing secret is read into logs.
    """
    return _credential_origin(env) is not None


def _credential_origin(env: Mapping[str, str]) -> str | None:
    """Describe where credentials come from (a variable or file name, never the secret)."""
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    token_files = [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL"):
        v1 = env.get("KAGGLE_API_V1_TOKEN", "")
        if v1 and _nonempty_file(Path(v1)):
            return "Kaggle notebook token file (KAGGLE_API_V1_TOKEN)"
    token = env.get("KAGGLE_API_TOKEN", "")
    if token:
        if not _is_file(Path(token)):
            return "environment variable KAGGLE_API_TOKEN"
        if _nonempty_file(Path(token)):
            return "token file named by KAGGLE_API_TOKEN"
        token_files = []  # kagglesdk stops at an empty KAGGLE_API_TOKEN file
    for f in token_files:
        if _nonempty_file(f):
            return f"token file {f}"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else (
        home / ".kaggle")
    for f in dict.fromkeys([config_dir / "kaggle.json", home / ".kaggle" / "kaggle.json"]):
        if not _is_file(f):
            continue
        try:
            creds = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("ignoring unreadable Kaggle credentials file %s", f)
            continue
        if isinstance(creds, dict) and creds.get("username") and creds.get("key"):
            return f"credentials file {f}"
        logger.warning("ignoring Kaggle credentials file %s: needs 'username' and 'key'", f)
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long token mistaken for a path
        return False


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return False


def resolve_source(source: str, env: Mapping[str, str] = os.environ) -> str:
    """Resolve ``auto|kaggle|csv|synthetic`` to a concrete source and log the choice.

    ``auto`` becomes ``kaggle`` when :func:`has_kaggle_credentials` finds credentials in
    ``env``, else ``synthetic``. Raises ``ValueError`` for any other value.
    """
    name = str(source).strip().lower()
    if name not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {list(SOURCES)}")
    if name != "auto":
        logger.info("data source: %s (configured)", name)
        return name
    origin = _credential_origin(env)
    if origin is not None:
        logger.info("data source 'auto' -> kaggle: Kaggle credentials found (%s)", origin)
        return "kaggle"
    logger.info("data source 'auto' -> synthetic: no Kaggle credentials found (set "
                "KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, or create "
                "~/.kaggle/access_token or ~/.kaggle/kaggle.json)")
    return "synthetic"


@contextmanager
def _kagglehub_cache(cache_dir: Path | None) -> Iterator[None]:
    """Point kagglehub's cache (``KAGGLEHUB_CACHE``, read per call) at ``cache_dir`` for a while."""
    if cache_dir is None:
        yield
        return
    old = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(cache_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = old


def download_kaggle(dataset: str, cache_dir: Path | None = None) -> Path:
    """Download ``dataset`` with ``kagglehub.dataset_download``; return the CSV inside.

    kagglehub keeps its own cache (``KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``);
    ``cache_dir`` overrides it for this call. Credentials are whatever kagglehub finds in
    the environment or Kaggle's files; they are neither passed nor logged here. With several
    CSVs in the dataset, :data:`KAGGLE_CSV_NAME` is taken, else it is an error.
    """
    import kagglehub  # imported lazily: only this source needs it

    if not has_kaggle_credentials():
        logger.warning("no Kaggle credentials found; trying %s without authentication", dataset)
    with _kagglehub_cache(cache_dir):
        folder = Path(kagglehub.dataset_download(dataset))
    logger.info("kagglehub: %s is at %s", dataset, folder)
    if folder.is_file():
        return folder
    csvs = sorted(folder.rglob("*.csv"))
    named = [p for p in csvs if p.name == KAGGLE_CSV_NAME]
    if len(named) == 1:
        return named[0]
    if len(csvs) == 1:
        return csvs[0]
    raise DataError(folder, f"expected one CSV in the Kaggle dataset {dataset}, found "
                            f"{[str(p.relative_to(folder)) for p in csvs]}")


def download(cfg: Mapping[str, Any], seed: int, out_csv: str | os.PathLike) -> dict[str, Any]:
    """Fetch the table from the configured source, validate it, write it in Kaggle format.

    ``cfg`` keys: ``source`` (``auto|kaggle|csv|synthetic``, default ``auto``), ``csv_path``
    (required for ``csv``), ``n_synthetic`` (rows for ``synthetic``, default
    :data:`DEFAULT_N_SYNTHETIC`), ``kaggle_dataset`` (default :data:`KAGGLE_DATASET`).
    ``seed`` only drives the synthetic generator.

    The CSV is written atomically: on any error nothing (not even a partial file) is left
    at ``out_csv``. Returns ``{"data_source", "n_rows", "n_dropped_negative_age",
    "n_scheduled_after_appointment", "sha256"}`` where ``data_source`` is the resolved
    source and ``sha256`` the hex digest of the written file.
    """
    source = resolve_source(str(cfg.get("source", "auto")))
    if source == "synthetic":
        n_cfg = cfg.get("n_synthetic")
        n_rows = DEFAULT_N_SYNTHETIC if n_cfg is None else int(n_cfg)
        raw = generate_synthetic(n_rows, seed)
        where: str | Path = f"<synthetic n_rows={n_rows} seed={seed}>"
    elif source == "csv":
        csv_path = cfg.get("csv_path")
        if not csv_path:
            raise ValueError("data source 'csv' needs cfg['csv_path'] (a .csv or a .zip "
                             "holding one CSV)")
        where = Path(csv_path)
        if not where.is_file():
            raise FileNotFoundError(f"csv_path {str(where)!r} (data source 'csv') does not "
                                    "exist or is not a file")
        raw = _read_raw(where)
    else:
        where = download_kaggle(str(cfg.get("kaggle_dataset") or KAGGLE_DATASET))
        raw = _read_raw(where)

    df, counts = validate(raw, where)
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    info = {
        "data_source": source,
        "n_rows": counts["n_rows"],
        "n_dropped_negative_age": counts["n_dropped_negative_age"],
        "n_scheduled_after_appointment": counts["n_scheduled_after_appointment"],
        "sha256": _sha256(out_csv),
    }
    logger.info("wrote %s: %d rows from %s (%s)", out_csv, info["n_rows"], source, where)
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
