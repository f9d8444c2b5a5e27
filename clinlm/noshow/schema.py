"""The Kaggle "Medical Appointment No Shows" schema: columns, reading and validation.

The table has 14 columns (:data:`KAGGLE_COLUMNS`), every cell a string in the Kaggle
formats (``2016-04-29T18:38:08Z``, ``0``/``1`` flags, ``Yes``/``No`` label).
:func:`read_csv` reads a ``.csv`` (or a ``.zip`` holding one) and :func:`validate` checks
and canonicalises a frame; errors name the file, the first bad row and the column.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from clinlm.io import DataError, read_table

logger = logging.getLogger(__name__)

#: The 14 columns of the Kaggle file, in order (the misspellings are the real names).
KAGGLE_COLUMNS: list[str] = [
    "PatientId", "AppointmentID", "Gender", "ScheduledDay", "AppointmentDay", "Age",
    "Neighbourhood", "Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap",
    "SMS_received", "No-show",
]
MAX_AGE = 115  # the oldest age in the real file; anything above is an error
BINARY_COLUMNS: list[str] = ["Scholarship", "Hipertension", "Diabetes", "Alcoholism",
                             "SMS_received"]
LABEL_COLUMN = "No-show"


def iso_utc(values: np.ndarray) -> np.ndarray:
    """Format ``datetime64`` values (UTC) as ``YYYY-MM-DDTHH:MM:SSZ`` strings."""
    text = np.datetime_as_string(np.asarray(values, dtype="datetime64[s]"), unit="s")
    return np.char.add(text, "Z").astype(object)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Kaggle-format ``.csv``, or a ``.zip`` holding exactly one CSV, and validate it.

    All columns are read as strings (no NA conversion), then :func:`validate` checks them
    and returns the cleaned table: the 14 :data:`KAGGLE_COLUMNS` as strings in the Kaggle
    formats, rows with a negative age dropped. Raises ``FileNotFoundError`` or
    :class:`~clinlm.io.DataError`.
    """
    path = Path(path)
    df, _ = validate(read_raw(path), path)
    return df


def read_raw(path: Path, separator: str | None = ",", encoding: str = "utf-8",
             key_prefix: str = "tasks.noshow.download") -> pd.DataFrame:
    """Read every cell of a ``.csv`` (or the single CSV in a ``.zip``) as a string.

    ``separator`` null: sniffed; ``encoding``: the text encoding (errors say which key to set).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [i.filename for i in zf.infolist()
                       if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
            csvs = [m for m in members if m.lower().endswith(".csv")]
            if len(csvs) != 1:
                raise DataError(path, f"expected exactly one .csv inside the zip, found "
                                      f"{csvs or members}")
            data = zf.read(csvs[0])
    return read_table(path, separator, encoding, key_prefix, data=data)


def validate(df: pd.DataFrame, path: str | os.PathLike, refuse_negative_age: bool = False
             ) -> tuple[pd.DataFrame, dict[str, int]]:
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

    ``refuse_negative_age`` (the prediction paths): a negative ``Age`` is an error like the
    others instead of a dropped row, so a prediction is refused in place, never lost.

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
        out[col] = pd.Series(iso_utc(dates[col].dt.tz_convert(None).to_numpy()))

    age = _integers(text["Age"], path, "Age", "Age must be an integer")
    _check(age > MAX_AGE, text["Age"], path, "Age", f"Age above {MAX_AGE}")
    if refuse_negative_age:
        _check(age < 0, text["Age"], path, "Age",
               "negative Age (the training data leaves such rows out)")
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
        text = pd.Series(iso_utc(utc.to_numpy()), index=col.index).where(utc.notna(), "")
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
        cells = [(int(i) + 1, column, f"{message}: got {values.iloc[i]!r}") for i in idx]
        raise DataError(path, f"{message}: got {values.iloc[first]!r} "
                              f"({idx.size} bad row(s) in all)", row=first + 1, column=column,
                        cells=cells)


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
