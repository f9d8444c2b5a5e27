"""Checking a user's table cell by cell: every bad cell found at once, grouped by column.

Shared by the csv sources of every task (``clinlm.vascular.csvsource``, ``clinlm.table``):
what counts as missing (:data:`DEFAULT_MISSING`), how codes are matched to cells
(:func:`normalise`, :func:`code_map`), numbers with an optional valid range
(:func:`parse_numbers`), and :class:`Problems`, which collects every rule a cell breaks and
raises one :class:`~clinlm.io.DataError` naming the file, the first bad row and column, and
listing the rest (its ``cells`` let the prediction paths refuse exactly those rows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from clinlm.io import DataError

#: cells read as missing unless ``missing_values`` says otherwise (compared after stripping)
DEFAULT_MISSING: tuple[str, ...] = ("", "?", "NA", "N/A", "n/a", "NaN", "nan", "null",
                                    "NULL", "None", "none", "-")


class Problems:
    """Every bad cell, reported grouped by column: count, first rows and values."""

    def __init__(self, path: str | os.PathLike, order: list[str], key_prefix: str) -> None:
        self.path, self.order, self.key_prefix = path, order, key_prefix
        self.groups: list[tuple[str, str, np.ndarray, pd.Series, str]] = []

    def add(self, mask: np.ndarray | pd.Series, column: str, what: str, values: pd.Series,
            hint: str = "") -> None:
        """Record the cells of ``column`` where ``mask`` holds (``what``: the rule broken)."""
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if rows.size:
            self.groups.append((column, what, rows, values, hint))

    def raise_all(self) -> None:
        """Raise one DataError for everything recorded (nothing when clean)."""
        if not self.groups:
            return
        groups = sorted(self.groups, key=lambda g: (self.order.index(g[0])
                                                    if g[0] in self.order else -1, g[2][0]))
        first = min(groups, key=lambda g: (g[2][0], self.order.index(g[0])
                                           if g[0] in self.order else -1))
        total = sum(len(g[2]) for g in groups)
        lines = []
        for column, what, rows, values, hint in groups:
            shown = ", ".join(f"{r + 1} ({values.iloc[r]!r})" for r in rows[:5])
            more = f", ... {len(rows) - 5} more" if len(rows) > 5 else ""
            lines.append(f"  column {column!r}: {len(rows)} cell(s) {what}: rows {shown}{more}"
                         + (f" -- {hint}" if hint else ""))
        r0 = int(first[2][0])
        head = (f"{first[1]} ({first[3].iloc[r0]!r}); {total} bad cell(s) in "
                f"{len({g[0] for g in groups})} column(s):")
        cells = [(int(r) + 1, column, f"{what}: got {values.iloc[r]!r}")
                 for column, what, rows, values, _ in groups for r in rows]
        raise DataError(self.path, head + "\n" + "\n".join(lines), row=r0 + 1, column=first[0],
                        cells=cells)


def normalise(text: pd.Series) -> pd.Series:
    """Lower-case text with numbers canonical (``1.0`` -> ``1``), to match codes."""
    low = text.str.lower()
    num = pd.to_numeric(low, errors="coerce")
    whole = num.notna() & (num == np.floor(num)) & (num.abs() < 2 ** 53)
    return low.where(~whole, num.where(whole).astype("Int64").astype(str))


def code_map(codes: Mapping[str, str]) -> dict[str, str]:
    """``codes`` with keys normalised like the cells (:func:`normalise`)."""
    keys = normalise(pd.Series(list(codes), dtype="string").str.strip())
    return dict(zip(keys, codes.values(), strict=True))


def parse_numbers(text: pd.Series, missing: pd.Series, column: str, problems: Problems,
                  key: str, rng: tuple[float, float, bool] | None = None, unit: str = "",
                  out_of_range: str = "error") -> pd.Series:
    """Cells -> floats (NaN where ``missing``); a cell that is not a finite number is a
    problem, and so is one outside ``rng`` = (low, high, low exclusive) unless
    ``out_of_range`` is ``"missing"``: then it is read as missing (the caller counts it)."""
    num = pd.to_numeric(text.where(~missing), errors="coerce").astype(float)
    bad = ~missing & (num.isna() | ~np.isfinite(num.fillna(0)))
    problems.add(bad, column, "not a number", text,
                 f"a missing-value marker? add it to {problems.key_prefix}.missing_values")
    if rng is not None:
        lo, hi, lo_open = rng
        out = num.notna() & ((num <= lo if lo_open else num < lo) | (num > hi))
        if out_of_range == "error":
            shown = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
            problems.add(out, column, f"outside {shown} {unit}".rstrip(), text,
                         f"if real, widen {key}.range")
        num = num.where(~out)
    return num.where(~bad)

