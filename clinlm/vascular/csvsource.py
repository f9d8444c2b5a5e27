"""A user's own CSV of ECG features + demographics + measured vascular age.

:func:`load_csv` validates every cell it uses and raises :class:`clinlm.io.DataError`
naming the file, the 1-based *data* row (the header is row 0) and the column of the first
bad cell (in row order, then column order); the message also says how many bad cells the
file has in all.

Units (the values of ``ecg_columns`` / ``demographic_columns``) and the rules per unit:

============ ========================= ============================= ======================
unit         meaning                   valid values                  stored as
============ ========================= ============================= ======================
``ms``       interval / duration       > 0 and < 2000 ms             ms
``s``        interval / duration       > 0 and < 2 s                 ms (x 1000)
``bpm``      heart rate                20 - 300                      bpm
``deg``      electrical axis           -180 - 360                    deg in (-180, 180]
``mV``       amplitude                 finite                        mV
``1``        any other number          finite                        as is
``years``    age                       0 - 120                       ``age``
``sex``      sex                       M/F, male/female, 1/0         ``sex`` M/F (1 = M)
             (demographics only)       (case-insensitive)
``cm`` ``m`` height                    30 - 250 cm                   ``height_cm``
``kg`` ``lb`` weight                   1 - 400 kg                    ``weight_kg``
``kg/m2``    BMI                       5 - 100                       ``bmi``
============ ========================= ============================= ======================

ECG columns whose name matches a known feature (case-insensitive, ignoring ``_``, ``-``,
spaces and a trailing unit: ``hr``/``heart rate``, ``pr``, ``qrs``, ``qt``, ``qtc``,
``sdnn``, ``rmssd``, ``p axis``, ``qrs axis``/``axis``, ``t axis``) are renamed to the
extractor's names (``hr_bpm``, ``pr_ms``, ...), so :func:`~clinlm.vascular.statements.
build_table` reads them; other ECG columns keep their name. Demographic columns are renamed
by unit (``age``, ``sex``, ``height_cm``, ``weight_kg``, ``bmi``); BMI is computed from
height and weight when both exist and no BMI column is given.

Other rules: the id column must be present and unique in every row; the target (measured
vascular age, years) must be present, numeric and within 0-120; a missing (empty) feature
or demographic cell is allowed (it is omitted from the statement), but a non-numeric one
(or an unknown sex) is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from clinlm.io import DataError

ECG_UNITS = {"ms", "s", "bpm", "deg", "mV", "1"}
DEMOGRAPHIC_UNITS = {"years", "sex", "cm", "m", "kg", "lb", "kg/m2"}
_RANGES: dict[str, tuple[float, float, bool]] = {
    # unit: (low, high, low is exclusive)
    "ms": (0.0, 2000.0, True), "s": (0.0, 2.0, True), "bpm": (20.0, 300.0, False),
    "deg": (-180.0, 360.0, False), "years": (0.0, 120.0, False), "cm": (30.0, 250.0, False),
    "m": (0.3, 2.5, False), "kg": (1.0, 400.0, False), "lb": (2.2, 880.0, False),
    "kg/m2": (5.0, 100.0, False),
}
_ALIASES = {
    "hr": "hr_bpm", "heartrate": "hr_bpm", "ventricularrate": "hr_bpm", "rate": "hr_bpm",
    "pr": "pr_ms", "printerval": "pr_ms", "qrs": "qrs_ms", "qrsduration": "qrs_ms",
    "qt": "qt_ms", "qtinterval": "qt_ms", "qtc": "qtc_ms", "qtcb": "qtc_ms",
    "sdnn": "sdnn_ms", "rmssd": "rmssd_ms", "paxis": "p_axis_deg", "qrsaxis": "qrs_axis_deg",
    "axis": "qrs_axis_deg", "taxis": "t_axis_deg",
}
_DEMO_NAME = {"years": "age", "sex": "sex", "cm": "height_cm", "m": "height_cm",
              "kg": "weight_kg", "lb": "weight_kg", "kg/m2": "bmi"}
_SEX = {"m": "M", "male": "M", "man": "M", "1": "M", "1.0": "M",
        "f": "F", "female": "F", "woman": "F", "0": "F", "0.0": "F"}


def canonical_ecg_name(column: str) -> str:
    """The extractor's feature name for a user column name (the column itself if unknown)."""
    key = re.sub(r"[\s_\-()\[\]]+", "", column.lower())
    key = re.sub(r"(ms|bpm|deg|degrees|s)$", "", key) if key not in _ALIASES else key
    return _ALIASES.get(key, column)


class _Problems:
    """Collects bad cells; raises the first (in row, then column order) with a count."""

    def __init__(self, path: str | os.PathLike, order: list[str]) -> None:
        self.path, self.order, self.items = path, order, []

    def add(self, mask: np.ndarray, column: str, what: pd.Series) -> None:
        for i in np.flatnonzero(mask):
            self.items.append((int(i) + 1, self.order.index(column), column, what.iloc[i]))

    def raise_first(self) -> None:
        if not self.items:
            return
        row, _, column, msg = min(self.items, key=lambda t: (t[0], t[1]))
        more = f" ({len(self.items)} bad cells in the file)" if len(self.items) > 1 else ""
        raise DataError(self.path, f"{msg}{more}", row=row, column=column)


def _numeric(raw: pd.Series, column: str, unit: str, problems: _Problems) -> pd.Series:
    text = raw.astype("string").str.strip()
    missing = text.isna() | (text == "")
    num = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = ~missing & num.isna()
    problems.add(bad.to_numpy(), column, "not a number: " + raw.astype(str))
    lo, hi, lo_open = _RANGES.get(unit, (-np.inf, np.inf, False))
    finite = np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))
    out_lo = num <= lo if lo_open else num < lo
    out = num.notna() & (out_lo | (num > hi) | ~finite)
    rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
    problems.add(out.to_numpy(), column,
                 f"impossible value for unit {unit!r} (valid {rng}): " + num.astype(str))
    return num.where(~out & ~bad).astype(float)


def load_csv(path: str | os.PathLike, id_column: str, target_column: str,
             ecg_columns: dict[str, str], demographic_columns: dict[str, str],
             group_column: str | None = None) -> pd.DataFrame:
    """Read and validate a user CSV (rules and units: module docstring).

    Args:
        path: CSV file (header row, comma-separated).
        id_column: unique record id.
        target_column: measured vascular age in years (0-120, required in every row).
        ecg_columns: ``{column: unit}`` with units from ``ms, s, bpm, deg, mV, 1``.
        demographic_columns: ``{column: unit}`` with units from ``years, sex, cm, m, kg,
            lb, kg/m2`` (each unit once).
        group_column: subject id (several records per subject); default: the id.

    Returns:
        A table with ``id``, ``subject_id`` (str), ``vascular_age`` (float, the target),
        demographics (``age``, ``sex``, ``height_cm``, ``weight_kg``, ``bmi``, those
        given) and ECG features (renamed, converted to ms/deg). ``attrs["units"]`` maps
        each output column to its unit; ``attrs["source"] = "csv"``.

    Raises:
        DataError: missing file or columns, or the first bad cell (file, row, column).
        ValueError: unknown units or clashing column mappings (a programming error).
    """
    path = Path(path)
    for col, unit in ecg_columns.items():
        if unit not in ECG_UNITS:
            raise ValueError(f"ECG column {col!r}: unit {unit!r} not one of {sorted(ECG_UNITS)}")
    units = list(demographic_columns.values())
    for col, unit in demographic_columns.items():
        if unit not in DEMOGRAPHIC_UNITS:
            raise ValueError(f"demographic column {col!r}: unit {unit!r} not one of "
                             f"{sorted(DEMOGRAPHIC_UNITS)}")
    names = [_DEMO_NAME[u] for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"two demographic columns map to the same field: {demographic_columns}")
    if not path.is_file():
        raise DataError(path, "file not found")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    needed = [id_column, target_column, *ecg_columns, *demographic_columns]
    if group_column:
        needed.append(group_column)
    missing = [c for c in dict.fromkeys(needed) if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}; found {list(raw.columns)}",
                        column=missing[0])
    order = list(raw.columns)
    problems = _Problems(path, order)

    ids = raw[id_column].str.strip()
    problems.add((ids == "").to_numpy(), id_column, pd.Series("missing id", index=raw.index))
    dup = ids.duplicated(keep="first") & (ids != "")
    problems.add(dup.to_numpy(), id_column, "duplicate id " + ids)

    tgt_txt = raw[target_column].str.strip()
    problems.add((tgt_txt == "").to_numpy(), target_column,
                 pd.Series("missing target (measured vascular age)", index=raw.index))
    target = _numeric(raw[target_column], target_column, "years", problems)

    out = pd.DataFrame({"id": ids})
    if group_column:
        grp = raw[group_column].str.strip()
        problems.add((grp == "").to_numpy(), group_column,
                     pd.Series("missing group id", index=raw.index))
        out["subject_id"] = grp
    else:
        out["subject_id"] = ids
    out["vascular_age"] = target
    out_units: dict[str, str] = {"vascular_age": "years"}

    for col, unit in demographic_columns.items():
        name = _DEMO_NAME[unit]
        if unit == "sex":
            txt = raw[col].str.strip()
            sex = txt.str.lower().map(_SEX)
            bad = (txt != "") & sex.isna()
            problems.add(bad.to_numpy(), col, "unknown sex " + txt.map(repr)
                         + " (use M/F, male/female or 1/0)")
            out[name] = sex
            out_units[name] = "M/F"
            continue
        v = _numeric(raw[col], col, unit, problems)
        if unit == "m":
            v = v * 100.0
        elif unit == "lb":
            v = v * 0.45359237
        out[name] = v
        out_units[name] = {"years": "years", "m": "cm", "cm": "cm", "kg": "kg", "lb": "kg",
                           "kg/m2": "kg/m2"}[unit]
    if "bmi" not in out.columns and {"height_cm", "weight_kg"} <= set(out.columns):
        out["bmi"] = out["weight_kg"] / (out["height_cm"] / 100.0) ** 2
        out_units["bmi"] = "kg/m2"

    for col, unit in ecg_columns.items():
        name = canonical_ecg_name(col)
        want = {"_bpm": {"bpm"}, "_ms": {"ms", "s"}, "_deg": {"deg"}}
        for suffix, ok in want.items():
            if name != col and name.endswith(suffix) and unit not in ok:
                raise ValueError(f"ECG column {col!r} is read as {name!r}: its unit must be "
                                 f"one of {sorted(ok)}, not {unit!r}")
        if name in out.columns:
            raise ValueError(f"ECG column {col!r} maps to {name!r}, which is already used")
        v = _numeric(raw[col], col, unit, problems)
        if unit == "s":
            v = v * 1000.0
        elif unit == "deg":
            v = ((v + 180.0) % 360.0) - 180.0
            v = v.where(v != -180.0, 180.0)
        out[name] = v
        out_units[name] = {"s": "ms"}.get(unit, unit)

    problems.raise_first()
    out.attrs.update(units=out_units, source="csv", target_column="vascular_age")
    return out
