"""Which columns of a user's table a ``kind: table`` task uses, what each one is, and how its
cells are checked.

A column is used when the mapping (``download.columns``) names it or an ``include`` pattern
matches it (``fnmatch``, e.g. ``"chV*_*"``; ``exclude`` patterns then remove columns).
A mapped column keeps what the mapping says; anything it leaves out is inferred from the
cells, as it is for a column selected by pattern:

* every filled cell a number: ``boolean`` when they are all 0/1, else ``number`` printed with
  three significant digits of the column's median (at most as many decimals as the cells
  have, at most 6);
* text: ``boolean`` when every value is yes/no/true/false/y/n, else ``category`` when it has
  at most ``max_categories`` values; a column selected by pattern with more (free text,
  dates, ids) is dropped with that reason, a mapped one is an error.

The resolved columns (:class:`Column`) are written to the raw folder's ``columns.json`` by
the download stage: the prediction paths (``predict``, ``ask``, ``serve``) read a new row
exactly as the training rows were read, and refuse a category value training never saw.
``download.json`` lists every used column (kind, whether inferred) and every dropped one
with the reason.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clinlm.cells import Problems, code_map, normalise, parse_numbers

#: what a yes/no cell may say (compared in lower case); codes map any other values to these
BOOL_WORDS: dict[str, float] = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0,
                                "no": 0.0, "y": 1.0, "n": 0.0}
#: names a feature may not take (the statements table's own columns)
RESERVED = {"id", "group", "statement", "label"}


class ColumnSpec(BaseModel):
    """One entry of ``download.columns``: what a column of the table is (null: inferred)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, description="words in the statement (null: the column "
                                                "name, _ as spaces)")
    unit: str | None = Field(None, description="printed after the value, e.g. mg/dL")
    kind: Literal["number", "category", "boolean"] | None = Field(
        None, description="null: inferred from the cells")
    codes: dict[str, str] | None = Field(
        None, description="raw value -> meaning: a category's labels {1: male}, a boolean's "
                          "{Y: yes, N: no}")
    range: tuple[float, float] | None = Field(None, description="valid [low, high] of a number")
    decimals: int | None = Field(None, ge=0, le=6, description="digits printed and kept "
                                                               "(null: 3 significant digits)")
    section: str | None = Field(None, description="statement part it is printed in, e.g. "
                                                  "Labs (null: the first, untitled part)")
    out_of_range: Literal["error", "missing"] | None = Field(
        None, description="a value outside range: an error, or read as missing and counted "
                          "(null: the table's out_of_range)")

    @field_validator("codes", mode="before")
    @classmethod
    def _text_keys(cls, v: Any) -> Any:  # YAML reads {0: M} with an int key
        return None if v is None else {str(k): str(x) for k, x in dict(v).items()}


@dataclass
class Column:
    """A used column, resolved (``columns.json`` holds :meth:`record` of each)."""

    column: str                 # the table's column
    name: str                   # the feature: ``f_<name>``, a template's ``{name}``
    kind: str                   # number | category | boolean
    label: str
    unit: str = ""
    decimals: int = 0
    section: str = ""
    codes: dict[str, str] | None = None
    range: tuple[float, float] | None = None
    out_of_range: str = "error"
    inferred: bool = False      # kind inferred from the cells (else the mapping's)
    categories: list[str] | None = None  # category: every value seen in training
    example: str | None = None  # a typical training value (the form's placeholder, never a value)

    def record(self) -> dict[str, Any]:
        """JSON-able (``columns.json``, ``download.json``)."""
        out = asdict(self)
        out["range"] = None if self.range is None else list(self.range)
        return out

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Column:
        rec = dict(rec)
        rec["range"] = None if rec.get("range") is None else tuple(rec["range"])
        return cls(**rec)


def feature_name(column: str) -> str:
    """A column's feature name: lower-case ``[a-z0-9_]``, starting with a letter."""
    slug = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    if not slug or not slug[0].isalpha():
        slug = "c_" + slug
    return slug + "_" if slug in RESERVED else slug


def _filled(cells: pd.Series, markers: set[str]) -> pd.Series:
    return cells[~cells.isin(markers)]


def significant_decimals(values: pd.Series, cells: pd.Series) -> int:
    """Decimals that print the median magnitude with three significant digits, no more than
    the cells carry themselves (so 1, 2, 3 stay whole numbers) and at most 6."""
    given = cells.str.partition(".")[2].str.len().max()
    mags = values.abs()
    mags = mags[mags > 0]
    if mags.empty:
        return 0
    want = max(0, 2 - math.floor(math.log10(float(mags.median()))))
    return int(min(want, int(given or 0), 6))


def infer_kind(cells: pd.Series, markers: set[str], max_categories: int
               ) -> tuple[str | None, str]:
    """(kind, why) of a column from its cells; kind None: not usable, ``why`` says so."""
    filled = _filled(cells, markers)
    if filled.empty:
        return None, "empty in every row"
    nums = pd.to_numeric(filled, errors="coerce")
    if nums.notna().all() and np.isfinite(nums.to_numpy(dtype=float)).all():
        return ("boolean", "numbers 0/1") if set(nums.unique()) <= {0.0, 1.0} else (
            "number", "numbers")
    values = set(filled.str.lower().unique())
    if values <= set(BOOL_WORDS):
        return "boolean", "yes/no values"
    n = len(values)
    if n <= max_categories:
        return "category", f"text with {n} value(s)"
    return None, (f"text with {n} different values (more than max_categories="
                  f"{max_categories}): free text, a date or an id? map it with kind: category "
                  "and codes, or leave it out")


def select_columns(cells: pd.DataFrame, columns: Mapping[str, ColumnSpec], *,
                   include: Sequence[str] | None, exclude: Sequence[str], reserved: Mapping[str, str],
                   markers: set[str], max_categories: int, out_of_range: str, key: str,
                   where: str) -> tuple[list[Column], list[dict[str, str]]]:
    """The used columns of ``cells`` (mapped, then matched by ``include``) and the dropped
    ones with the reason. ``reserved``: column -> its role (id, group, target), never a
    feature. Errors name the params key."""
    from clinlm.io import DataError

    header = list(cells.columns)
    unknown = [c for c in columns if c not in header]
    if unknown:
        raise DataError(where, f"{key}.columns names {unknown}, not in the table; its columns "
                               f"are {header[:40]}", column=unknown[0])
    for col, role in reserved.items():
        if col in columns:
            raise ValueError(f"{key}.columns.{col}: this column is the {role}, not a feature")
    if include is None:
        include = [] if columns else ["*"]
    picked: dict[str, str] = {}
    for pattern in include:
        hits = [c for c in header if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise ValueError(f"{key}.include: pattern {pattern!r} matches no column of {where}; "
                             f"its columns are {header[:40]}")
        for c in hits:
            picked.setdefault(c, pattern)
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(c, pattern) for c in header):
            raise ValueError(f"{key}.exclude: pattern {pattern!r} matches no column of {where}")
    dropped: list[dict[str, str]] = []
    used: list[Column] = []
    names: dict[str, str] = {}
    for col in header:
        if col in reserved:
            dropped.append({"column": col, "reason": f"the {reserved[col]}"})
            continue
        excluded = next((p for p in exclude if fnmatch.fnmatchcase(col, p)), None)
        if col not in columns and excluded is not None:
            dropped.append({"column": col, "reason": f"excluded by {key}.exclude {excluded!r}"})
            continue
        if col not in columns and col not in picked:
            dropped.append({"column": col, "reason": "not mapped and matched by no include "
                                                     "pattern"})
            continue
        spec = columns.get(col) or ColumnSpec()
        resolved = _resolve(col, spec, cells[col], markers, max_categories, out_of_range,
                            f"{key}.columns.{col}", mapped=col in columns)
        if isinstance(resolved, str):
            dropped.append({"column": col, "reason": resolved})
            continue
        base, n = resolved.name, 2
        while resolved.name in names:  # "Mean Radius" and "mean_radius"
            resolved.name, n = f"{base}_{n}", n + 1
        names[resolved.name] = col
        used.append(resolved)
    if not used:
        raise ValueError(f"{key}: no usable feature column in {where} (dropped: "
                         f"{[d['column'] + ': ' + d['reason'] for d in dropped][:10]})")
    return used, dropped


def _resolve(col: str, spec: ColumnSpec, cells: pd.Series, markers: set[str],
             max_categories: int, out_of_range: str, key: str, mapped: bool) -> Column | str:
    """One column resolved; a reason (str) when a column selected by pattern is unusable."""
    kind, why = (spec.kind, "mapped") if spec.kind else infer_kind(
        cells if spec.codes is None else normalise(cells).map(code_map(spec.codes)).fillna(cells),
        markers, max_categories)
    if kind is None:
        if mapped:
            raise ValueError(f"{key}: {why}")
        return why
    if spec.codes is not None and kind == "number":
        raise ValueError(f"{key}.codes: a number column has no codes (kind: category?)")
    if spec.range is not None and kind != "number":
        raise ValueError(f"{key}.range: only a number column has a range (this one is {kind})")
    if spec.range is not None and not spec.range[0] < spec.range[1]:
        raise ValueError(f"{key}.range: low {spec.range[0]} must be below high {spec.range[1]}")
    if kind == "category":
        filled = _filled(cells, markers)
        n = filled.nunique() if spec.codes is None else len(set(spec.codes.values()))
        if n > max_categories:
            raise ValueError(f"{key}: a category with {n} values (more than max_categories="
                             f"{max_categories}); raise max_categories if every value is "
                             "meaningful, or group them with codes")
    if kind == "boolean" and spec.codes is not None:
        wrong = [v for v in spec.codes.values() if v.lower() not in BOOL_WORDS]
        if wrong:
            raise ValueError(f"{key}.codes: a boolean's codes must mean yes or no, got {wrong}")
    decimals = spec.decimals
    if decimals is None and kind == "number":
        filled = _filled(cells, markers)
        values = pd.to_numeric(filled, errors="coerce").dropna()
        decimals = significant_decimals(values, filled[values.index])
    return Column(column=col, name=feature_name(col), kind=kind,
                  label=spec.label or col.replace("_", " ").strip(), unit=spec.unit or "",
                  decimals=int(decimals or 0), section=spec.section or "", codes=spec.codes,
                  range=None if spec.range is None else (float(spec.range[0]),
                                                         float(spec.range[1])),
                  out_of_range=spec.out_of_range or out_of_range,
                  inferred=spec.kind is None)


def parse_columns(cells: pd.DataFrame, used: Sequence[Column], problems: Problems,
                  markers: set[str], key: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The used columns' cells -> typed values (number: float rounded as printed; boolean:
    0/1 float; category: text, codes applied; NaN/None where missing) and, per column whose
    ``out_of_range`` is ``missing``, how many values were read as missing. Every bad cell goes
    to ``problems`` (a category value outside ``categories``, once known, is one)."""
    out: dict[str, Any] = {}
    counted: dict[str, int] = {}
    for c in used:
        txt = cells[c.column].astype(str).str.strip()
        gone = txt.isin(markers)
        ckey = f"{key}.columns.{c.column}"
        if c.kind == "number":
            rng = None if c.range is None else (c.range[0], c.range[1], False)
            num = parse_numbers(txt, gone, c.column, problems, ckey, rng=rng, unit=c.unit,
                                out_of_range=c.out_of_range)
            if c.out_of_range == "missing" and c.range is not None:
                read = pd.to_numeric(txt.where(~gone), errors="coerce")
                counted[c.column] = int(read.notna().sum() - num.notna().sum())
            out[c.name] = num.round(c.decimals) + 0.0  # no "-0"
        elif c.kind == "boolean":
            given = normalise(txt)
            if c.codes is not None:
                given = given.map(code_map(c.codes)).str.lower()
            value = given.map(BOOL_WORDS)
            problems.add(~gone & value.isna(), c.column, "not yes/no", txt,
                         f"map its values in {ckey}.codes, e.g. {{Y: yes, N: no}}")
            out[c.name] = value.where(~gone).astype(float)
        else:
            value = normalise(txt).map(code_map(c.codes)) if c.codes is not None else txt
            if c.codes is not None:
                problems.add(~gone & value.isna(), c.column, "value not in codes", txt,
                             f"add it to {ckey}.codes")
            if c.categories is not None:
                unseen = ~gone & value.notna() & ~value.isin(c.categories)
                problems.add(unseen, c.column, "a value training never saw", txt,
                             f"known: {c.categories[:20]}")
            out[c.name] = value.where(~gone).astype(object)
    frame = pd.DataFrame(out, index=cells.index)
    return frame, counted
