"""A user's own table of ECG features + demographics + a measured target, taken as it is.

The mapping (``tasks.vascular_age.download.columns``) says what each column IS::

    columns:
      PatientAge: {feature: age, unit: years}
      Gender:     {feature: sex, codes: {MALE: M, FEMALE: F}}
      QRSDuration: {feature: qrs, unit: ms}
      RAxis:      {feature: qrs_axis, unit: deg}
      AtrialRate: {feature: atrial_rate, unit: bpm, range: [20, 700]}
      Rhythm:     {feature: rhythm, kind: category, codes: {AFIB: atrial fibrillation}}

* A **known feature** (:data:`KNOWN`: ``age sex height weight bmi hr pr qrs qt qtc p_axis
  qrs_axis t_axis sdnn rmssd sbp bp_treated total_chol hdl smoker diabetes``) is stored under
  its canonical name (``qrs_ms``...), converted to its canonical unit (``s`` -> ms, ``m``/``in``
  -> cm, ``lb`` -> kg) and printed where the statement has its place.
* **Any other feature** keeps its own name (lower-case, ``[a-z0-9_]``) and unit, and is printed
  as ``<label> <value> <unit>`` in the ECG part of the statement (``section: clinical`` for
  the other part); nothing mapped is ever dropped.
* ``kind: category`` columns (rhythm labels, beat annotations) are printed as text and become
  one-hot ``f_*`` features; ``codes`` maps raw values to what they mean (for ``sex`` and yes/no
  features too: ``{0: M, 1: F}``).

What :func:`read_table` accepts: any separator (``csv_separator``, sniffed when null), any
encoding (``csv_encoding``; a decoding error says which key to set), missing-value markers
(``missing_values``, default :data:`DEFAULT_MISSING`), no id column (``id_column: null``: the
1-based data row number becomes the id).

Validation (:func:`parse_frame`) checks every mapped cell and reports **every** bad cell,
grouped by column (count, first rows and values) in one :class:`~clinlm.io.DataError`, which
names the file and the first bad cell's row and column. Rules per unit (:data:`RANGES`, each
overridable per column with ``range: [low, high]``):

============ ========================= ===========================================
unit         meaning                   default valid values
============ ========================= ===========================================
``ms``       interval / duration       (0, 3000]
``s``        interval / duration       (0, 3]
``bpm``      a rate                    [10, 700] (atrial rates in flutter exceed 300)
``deg``      electrical axis           [-180, 360], stored in (-180, 180]
``mV``/``uV`` amplitude                finite
``years``    age                       [0, 120]
``cm``/``m``/``in`` height             [30, 250] cm
``kg``/``lb`` weight                   [1, 400] kg
``kg/m2``    BMI                       [5, 100]
``mmHg``     blood pressure            [40, 300]
``mg/dL``    cholesterol               [10, 1000]
other        any number                finite
============ ========================= ===========================================
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clinlm.cells import DEFAULT_MISSING, Problems, code_map, normalise, parse_numbers
from clinlm.io import DataError, read_table

log = logging.getLogger(__name__)


#: known feature -> (stored column, canonical unit, kind, statement section)
KNOWN: dict[str, tuple[str, str, str, str]] = {
    "age": ("age", "years", "number", "opening"), "sex": ("sex", "sex", "sex", "opening"),
    "height": ("height_cm", "cm", "number", "opening"),
    "weight": ("weight_kg", "kg", "number", "opening"),
    "bmi": ("bmi", "kg/m2", "number", "opening"),
    "sbp": ("sbp_mmhg", "mmHg", "number", "risk"), "bp_treated": ("bp_treated", "", "bool", "risk"),
    "total_chol": ("total_chol_mgdl", "mg/dL", "number", "risk"),
    "hdl": ("hdl_mgdl", "mg/dL", "number", "risk"),
    "smoker": ("smoker", "", "bool", "risk"), "diabetes": ("diabetes", "", "bool", "risk"),
    "hr": ("hr_bpm", "bpm", "number", "ecg"), "pr": ("pr_ms", "ms", "number", "ecg"),
    "qrs": ("qrs_ms", "ms", "number", "ecg"), "qt": ("qt_ms", "ms", "number", "ecg"),
    "qtc": ("qtc_ms", "ms", "number", "ecg"), "p_axis": ("p_axis_deg", "deg", "number", "ecg"),
    "qrs_axis": ("qrs_axis_deg", "deg", "number", "ecg"),
    "t_axis": ("t_axis_deg", "deg", "number", "ecg"), "sdnn": ("sdnn_ms", "ms", "number", "ecg"),
    "rmssd": ("rmssd_ms", "ms", "number", "ecg"),
}
_BY_COLUMN = {v[0]: k for k, v in KNOWN.items()}  # "qrs_ms" -> "qrs" (either name is accepted)

#: unit -> (canonical unit, factor): what a known feature accepts and how it converts
CONVERT: dict[str, tuple[str, float]] = {
    "s": ("ms", 1000.0), "m": ("cm", 100.0), "in": ("cm", 2.54), "lb": ("kg", 0.45359237),
}
#: unit -> (low, high, low exclusive)
RANGES: dict[str, tuple[float, float, bool]] = {
    "ms": (0.0, 3000.0, True), "s": (0.0, 3.0, True), "bpm": (10.0, 700.0, False),
    "deg": (-180.0, 360.0, False), "years": (0.0, 120.0, False), "cm": (30.0, 250.0, False),
    "m": (0.3, 2.5, False), "in": (12.0, 100.0, False), "kg": (1.0, 400.0, False),
    "lb": (2.2, 880.0, False), "kg/m2": (5.0, 100.0, False), "mmHg": (40.0, 300.0, False),
    "mg/dL": (10.0, 1000.0, False),
}
#: decimals printed (and kept in f_*) per unit; other units: 2
DECIMALS = {"ms": 0, "s": 0, "bpm": 0, "deg": 0, "years": 0, "cm": 0, "m": 0, "in": 0, "kg": 0,
            "lb": 0, "kg/m2": 1, "mmHg": 0, "mg/dL": 0, "mV": 2, "uV": 0, "1": 2}
_SEX_CODES = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
_BOOL_CODES = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "y": 1.0,
               "n": 0.0}
_RESERVED = {"id", "subject_id", "vascular_age", "target", "label", "group", "statement"}


class CsvColumn(BaseModel):
    """One entry of ``columns``: what a column of the user's table is."""

    model_config = ConfigDict(extra="forbid")

    feature: str = Field(min_length=1, description="a known feature (KNOWN) or any other "
                                                   "name [a-z][a-z0-9_]*")
    unit: str | None = Field(None, description="the column's unit (null: the known feature's "
                                               "canonical unit, '1' for other numbers)")
    kind: Literal["number", "category"] | None = Field(
        None, description="null: number (sex and yes/no features have their own kinds)")
    codes: dict[str, str] | None = Field(
        None, description="raw value -> meaning: sex {0: M, 1: F}, yes/no {Y: yes}, a "
                          "category's labels {AFIB: atrial fibrillation}")
    range: tuple[float, float] | None = Field(None, description="valid [low, high] in the "
                                                                "column's own unit")
    label: str | None = Field(None, description="words in the statement (null: the feature "
                                                "name)")
    decimals: int | None = Field(None, ge=0, le=6, description="digits printed (null: by unit)")
    section: Literal["ecg", "clinical"] | None = Field(
        None, description="other features: statement part (null: ecg)")

    @field_validator("codes", mode="before")
    @classmethod
    def _text_keys(cls, v: Any) -> Any:  # YAML reads {0: M} with an int key
        return None if v is None else {str(k): str(x) for k, x in dict(v).items()}


class CsvOptions(BaseModel):
    """How to read the user's table (the csv keys of ``tasks.vascular_age.download``)."""

    model_config = ConfigDict(extra="forbid")

    columns: dict[str, CsvColumn] = {}
    id_column: str | None = None
    target_column: str | None = None
    group_column: str | None = None
    separator: str | None = None
    encoding: str = "utf-8"
    missing_values: list[str] | None = None
    max_categories: int = Field(20, ge=1)
    key_prefix: str = "tasks.vascular_age.download"


@dataclass
class Feature:
    """A resolved mapping entry (recorded in the raw table's attrs and in download.json)."""

    column: str            # the user's column
    name: str              # stored column
    kind: str              # number | sex | bool | category
    unit: str              # stored unit ("" for sex/bool/category)
    section: str           # opening | risk | ecg | clinical
    label: str
    decimals: int
    known: bool
    codes: dict[str, str] | None = field(default=None, repr=False)
    range: tuple[float, float, bool] | None = field(default=None, repr=False)
    factor: float = 1.0
    source_unit: str = ""

    def record(self) -> dict[str, Any]:
        """The JSON-able facts (download.json, parquet attrs)."""
        return {"column": self.column, "name": self.name, "kind": self.kind, "unit": self.unit,
                "section": self.section, "label": self.label, "decimals": self.decimals,
                "known": self.known}


def resolve(columns: Mapping[str, CsvColumn | Mapping[str, Any]],
            key_prefix: str = "tasks.vascular_age.download") -> list[Feature]:
    """Check the mapping and resolve each entry; errors name the params key."""
    out: list[Feature] = []
    seen: dict[str, str] = {}
    for col, spec in columns.items():
        spec = spec if isinstance(spec, CsvColumn) else CsvColumn.model_validate(dict(spec))
        key = f"{key_prefix}.columns.{col}"
        feat = _BY_COLUMN.get(spec.feature, spec.feature)
        if feat in KNOWN:
            name, canon, kind, section = KNOWN[feat]
            unit = spec.unit or canon
            factor = 1.0
            if kind in ("sex", "bool"):
                if spec.unit not in (None, "", kind):
                    raise ValueError(f"{key}.unit: {feat!r} has no unit (got {spec.unit!r})")
                unit = canon = ""
            elif unit != canon:
                to, factor = CONVERT.get(unit, (None, 1.0))
                if to != canon:
                    ok = [canon, *[u for u, (c, _) in CONVERT.items() if c == canon]]
                    raise ValueError(f"{key}.unit: {feat!r} is in {canon}; {unit!r} is not one "
                                     f"of {ok}")
            if spec.kind == "category":
                raise ValueError(f"{key}.kind: {feat!r} is a known {kind}, not a category")
            label = spec.label or ""
            src_unit, unit = unit, canon
        else:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", feat) or feat in _RESERVED:
                raise ValueError(f"{key}.feature: {feat!r} is not a known feature "
                                 f"({sorted(KNOWN)}) and not a usable new name "
                                 "(lower-case letters, digits and _; not id/label/...)")
            kind = spec.kind or "number"
            name, section = feat, spec.section or "ecg"
            src_unit = unit = "" if kind == "category" else (spec.unit or "1")
            factor = 1.0
            label = spec.label or feat.replace("_", " ")
        if name in seen:
            raise ValueError(f"{key}.feature: {feat!r} is already given by column {seen[name]!r}")
        seen[name] = col
        if spec.codes is not None and kind == "number":
            raise ValueError(f"{key}.codes: a number column has no codes (kind: category?)")
        if spec.codes is not None and kind in ("sex", "bool"):
            meaning = _SEX_CODES if kind == "sex" else _BOOL_CODES
            wrong = [v for v in spec.codes.values() if v.lower() not in meaning]
            if wrong:
                raise ValueError(f"{key}.codes: {feat!r} values must mean one of "
                                 f"{sorted(meaning)}, got {wrong}")
        rng = None
        if spec.range is not None:
            lo, hi = spec.range
            if not lo < hi:
                raise ValueError(f"{key}.range: low {lo} must be below high {hi}")
            rng = (float(lo), float(hi), False)
        elif kind == "number":
            rng = RANGES.get(src_unit)
        decimals = spec.decimals if spec.decimals is not None else DECIMALS.get(src_unit, 2)
        out.append(Feature(col, name, kind, unit, section, label, decimals, feat in KNOWN,
                           spec.codes, rng, factor, src_unit))
    return out


def _numbers(text: pd.Series, missing: pd.Series, f: Feature, problems: Problems,
             key: str) -> pd.Series:
    return parse_numbers(text, missing, f.column, problems, key, rng=f.range,
                         unit=f.source_unit) * f.factor


def parse_frame(raw: pd.DataFrame, opts: CsvOptions, where: str | os.PathLike,
                require_target: bool = True) -> pd.DataFrame:
    """Validate a table of strings (:func:`read_table`) against ``opts``; see module docstring.

    Returns ``id``, ``subject_id``, ``vascular_age`` (the target; NaN when
    ``require_target`` is false and the column is absent) and one column per mapped feature.
    ``attrs``: ``source="csv"``, ``target_column="vascular_age"``, ``units``, ``features``
    (:meth:`Feature.record` of each), ``id_from_row_number``.
    """
    p = opts.key_prefix
    feats = resolve(opts.columns, p)
    if not feats:
        raise ValueError(f"{p}.columns is empty: say what each column of your table is, e.g. "
                         "{QRS: {feature: qrs, unit: ms}, Age: {feature: age}}")
    has_target = bool(opts.target_column) and opts.target_column in raw.columns
    needed = [c for c in (opts.id_column, opts.group_column) if c]
    needed += [opts.target_column] if (require_target and opts.target_column) else []
    needed += [f.column for f in feats]
    missing_cols = [c for c in dict.fromkeys(needed) if c not in raw.columns]
    if missing_cols:
        raise DataError(where, f"missing column(s) {missing_cols}; the table has "
                               f"{list(raw.columns)[:40]}", column=missing_cols[0])
    markers = set(DEFAULT_MISSING if opts.missing_values is None else opts.missing_values)
    problems = Problems(where, list(raw.columns), p)
    n = len(raw)

    if opts.id_column:
        ids = raw[opts.id_column].astype(str).str.strip()
        problems.add(ids.isin(markers), opts.id_column, "missing id", ids)
        problems.add(ids.duplicated() & ~ids.isin(markers), opts.id_column, "duplicate id", ids)
    else:
        ids = pd.Series(np.arange(1, n + 1).astype(str), index=raw.index)
    out = pd.DataFrame({"id": ids.to_numpy()}, index=raw.index)
    if opts.group_column:
        grp = raw[opts.group_column].astype(str).str.strip()
        problems.add(grp.isin(markers), opts.group_column, "missing group id", grp)
        out["subject_id"] = grp.to_numpy()
    else:
        out["subject_id"] = out["id"]

    if has_target:
        tgt = Feature(opts.target_column, "vascular_age", "number", "years", "", "", 1, False,
                      range=RANGES["years"], source_unit="years")
        txt = raw[opts.target_column].astype(str).str.strip()
        gone = txt.isin(markers)
        if require_target:
            problems.add(gone, opts.target_column, "missing target", txt)
        out["vascular_age"] = _numbers(txt, gone, tgt, problems, f"{p}.csv_target_column")
    else:
        out["vascular_age"] = np.nan
    units: dict[str, str] = {"vascular_age": "years"}

    for f in feats:
        key = f"{p}.columns.{f.column}"
        txt = raw[f.column].astype(str).str.strip()
        gone = txt.isin(markers)
        if f.kind == "number":
            out[f.name] = _numbers(txt, gone, f, problems, key).to_numpy()
            if f.unit == "deg":  # axes: one convention, (-180, 180]
                v = ((out[f.name] + 180.0) % 360.0) - 180.0
                out[f.name] = v.where(v != -180.0, 180.0)
        elif f.kind in ("sex", "bool"):
            meaning = _SEX_CODES if f.kind == "sex" else _BOOL_CODES
            codes = code_map(f.codes) if f.codes is not None else {k: k for k in meaning}
            given = normalise(txt).map(codes)  # raw value -> its meaning's text
            unknown = ~gone & given.isna()
            if f.kind == "sex" and f.codes is None:  # 0/1 differ between tables: never guess
                numeric = unknown & pd.to_numeric(txt, errors="coerce").notna()
                problems.add(numeric, f.column, "sex given as a number", txt,
                             f"say which is which: {key}.codes: {{0: M, 1: F}} (or the reverse)")
                unknown &= ~numeric
            problems.add(unknown, f.column, f"unknown {f.kind} value", txt,
                         f"known: {sorted(codes)}; map the others in {key}.codes")
            stored = given.str.lower().map(meaning)
            out[f.name] = stored.where(~gone).to_numpy()
        else:  # category
            if f.codes is not None:
                mapped = normalise(txt).map(code_map(f.codes))
                problems.add(~gone & mapped.isna(), f.column, "value not in codes", txt,
                             f"add it to {key}.codes")
            else:
                mapped = txt
            out[f.name] = mapped.where(~gone).astype(object).to_numpy()
        units[f.name] = f.unit

    problems.raise_all()
    if "bmi" not in out.columns and {"height_cm", "weight_kg"} <= set(out.columns):
        out["bmi"] = out["weight_kg"] / (out["height_cm"] / 100.0) ** 2
        units["bmi"] = "kg/m2"
    out = out.reset_index(drop=True)
    out.attrs.update(source="csv", target_column="vascular_age", units=units,
                     features=[f.record() for f in feats],
                     id_from_row_number=not opts.id_column,
                     max_categories=opts.max_categories)
    return out


def load_csv(path: str | os.PathLike, opts: CsvOptions | Mapping[str, Any]) -> pd.DataFrame:
    """Read (:func:`read_table`) and validate (:func:`parse_frame`) a user's table."""
    opts = opts if isinstance(opts, CsvOptions) else CsvOptions.model_validate(dict(opts))
    raw = read_table(path, opts.separator, opts.encoding, opts.key_prefix)
    table = parse_frame(raw, opts, path)
    if not opts.id_column:
        log.info("%s: no id column (%s.id_column: null): row numbers 1..%d are the ids",
                 path, opts.key_prefix, len(table))
    used = ", ".join(f"{f['column']} -> {f['name']}" + (f" ({f['unit']})" if f["unit"] else "")
                     for f in table.attrs["features"])
    log.info("%s: %d rows; features used: %s", path, len(table), used)
    return table
