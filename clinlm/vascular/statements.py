"""The method table of the vascular-age task: one English statement per recording.

:func:`build_table` turns a raw table (from :func:`~clinlm.vascular.synthetic.generate_cohort`
+ features, :func:`~clinlm.vascular.ptbxl.load_ptbxl` + features, or
:func:`~clinlm.vascular.csvsource.load_csv`) into the schema every method consumes
(:mod:`clinlm.methods.interface`):

* ``id`` (str), ``group`` (str; the subject, so a split keeps a person on one side),
* ``statement`` (str), e.g. "A 54-year-old man, height 178 cm, weight 82 kg (BMI 25.9).
  Risk factors: systolic blood pressure 142 mmHg (treated), total cholesterol 210 mg/dL,
  HDL cholesterol 45 mg/dL, smoker, no diabetes. ECG: heart rate 68 bpm, PR 160 ms,
  QRS 94 ms, QT 398 ms, QTc 423 ms, P axis 50°, QRS axis 35°, T axis 40°, SDNN 42 ms,
  RMSSD 31 ms.",
* ``label`` (float, the target; NaN allowed at predict time),
* ``f_*`` numeric features carrying exactly the statement's information, rounded as
  printed (``f_sex_male`` 1/0; booleans 1/0; NaN where the statement omits the item).

Missing values are left out of the sentence (``say_unrecorded=True``, for a case typed into a
form: listed at the end as "Not recorded: total cholesterol, ECG."). The target column never
appears, and when the target is chronological age (PTB-XL), age is left out of both the
statement and ``f_*``.
Latent/derivation columns (``true_*``, ``vascular_age_framingham``, ``ecg_shift_years``,
``framingham_risk_10y``) are never used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Item:
    """One numeric item of the statement: ``<label> <value><unit>``."""

    column: str
    label: str
    unit: str
    decimals: int = 0


BODY = (Item("height_cm", "height", " cm"), Item("weight_kg", "weight", " kg"))
RISK_NUMERIC = (Item("total_chol_mgdl", "total cholesterol", " mg/dL"),
                Item("hdl_mgdl", "HDL cholesterol", " mg/dL"))
ECG_ITEMS = (
    Item("hr_bpm", "heart rate", " bpm"), Item("pr_ms", "PR", " ms"),
    Item("qrs_ms", "QRS", " ms"), Item("qt_ms", "QT", " ms"), Item("qtc_ms", "QTc", " ms"),
    Item("p_axis_deg", "P axis", "°"), Item("qrs_axis_deg", "QRS axis", "°"),
    Item("t_axis_deg", "T axis", "°"), Item("sdnn_ms", "SDNN", " ms"),
    Item("rmssd_ms", "RMSSD", " ms"),
)
RISK_COLUMNS = ("sbp_mmhg", "bp_treated", "total_chol_mgdl", "hdl_mgdl", "smoker", "diabetes")


def _num(raw: pd.DataFrame, col: str) -> pd.Series:
    if col not in raw.columns:
        return pd.Series(np.nan, index=raw.index, dtype=float)
    return pd.to_numeric(raw[col], errors="coerce").astype(float)


def _rounded(s: pd.Series, decimals: int) -> pd.Series:
    r = s.round(decimals)
    return r + 0.0  # no "-0"


def _fmt(s: pd.Series, decimals: int) -> pd.Series:
    """Formatted numbers ("" where missing), vectorised."""
    r = _rounded(s, decimals)
    txt = r.round().astype("Int64").astype(str) if decimals == 0 else r.astype(str)
    return txt.where(r.notna(), "")


def _piece(s: pd.Series, text: pd.Series, sep: str = ", ") -> pd.Series:
    """``sep + text`` where ``s`` is present, else ""."""
    return (sep + text).where(s.notna(), "")


def _bool(raw: pd.DataFrame, col: str) -> pd.Series:
    """0/1 float (NaN when missing) from bools, 0/1, yes/no, true/false."""
    if col not in raw.columns:
        return pd.Series(np.nan, index=raw.index, dtype=float)
    s = raw[col]
    if s.dtype == bool:
        return s.astype(float)
    low = s.astype(str).str.strip().str.lower()
    mapped = low.map({"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "true": 1.0, "false": 0.0,
                      "yes": 1.0, "no": 0.0, "y": 1.0, "n": 0.0})
    return mapped.where(s.notna()).astype(float)


def _sex_male(raw: pd.DataFrame) -> pd.Series:
    if "sex" not in raw.columns:
        return pd.Series(np.nan, index=raw.index, dtype=float)
    low = raw["sex"].astype(str).str.strip().str.lower()
    return low.map({"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}).astype(float)


def _same(a: pd.Series, b: pd.Series) -> bool:
    """True when two columns hold the same numbers (so one is the other in disguise)."""
    x = pd.to_numeric(a, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(b, errors="coerce").to_numpy(dtype=float)
    both = ~np.isnan(x) & ~np.isnan(y)
    return bool(both.any()) and bool(np.allclose(x[both], y[both]))


def _suffix(unit: str) -> str:
    """How a unit follows a number: ``°`` for degrees, nothing for plain numbers."""
    return {"deg": "°", "": "", "1": ""}.get(unit, " " + unit)


def _category(values: pd.Series, name: str, label: str, max_categories: int,
              feats: dict[str, pd.Series]) -> pd.Series:
    """``", <label> <value>"`` pieces, and one-hot ``f_<name>__<value>`` features for the
    ``max_categories`` most frequent values (ties by name; NaN where the cell is missing)."""
    present = values.notna()
    counts = values[present].astype(str).value_counts()
    top = sorted(counts.index, key=lambda v: (-counts[v], v))[:max_categories]
    for v in top:
        slug = re.sub(r"[^a-z0-9]+", "_", v.lower()).strip("_") or "value"
        feats[f"f_{name}__{slug}"] = (values.astype(str) == v).astype(float).where(present)
    return _piece(values.where(present), f"{label} " + values.astype(str))


#: how an empty item is named in "Not recorded: ..." (the ECG items: their own labels)
_UNRECORDED_NAMES = {"age": "age", "sex": "sex", "height_cm": "height", "weight_kg": "weight",
                     "sbp_mmhg": "systolic blood pressure",
                     "bp_treated": "blood pressure treatment",
                     "total_chol_mgdl": "total cholesterol", "hdl_mgdl": "HDL cholesterol",
                     "smoker": "smoking", "diabetes": "diabetes"}


def _unrecorded(raw: pd.DataFrame, with_age: bool, with_risk: bool,
                extra: list[dict]) -> pd.Series:
    """`` Not recorded: a, b.`` per row for the items whose column is present but empty
    ("" where everything is given); every ECG item empty -> the one word "ECG"."""
    def empty(col: str) -> pd.Series:
        return raw[col].isna() | raw[col].astype(str).str.strip().isin(["", "nan", "None"])

    items: list[tuple[pd.Series, str]] = []
    opening = (["age"] if with_age else []) + ["sex", "height_cm", "weight_kg"]
    for col in opening + (list(RISK_COLUMNS) if with_risk else []):
        if col in raw.columns:
            items.append((empty(col), _UNRECORDED_NAMES[col]))
    ecg = [(empty(it.column), it.label) for it in ECG_ITEMS if it.column in raw.columns]
    ecg += [(empty(f["name"]), f["label"]) for f in extra
            if f["section"] == "ecg" and f["name"] in raw.columns]
    other = [(empty(f["name"]), f["label"]) for f in extra
             if f["section"] != "ecg" and f["name"] in raw.columns]
    no_ecg = (pd.concat([m for m, _ in ecg], axis=1).all(axis=1) if ecg
              else pd.Series(False, index=raw.index))
    items += [(m & ~no_ecg, label) for m, label in ecg] + [(no_ecg, "ECG")] + other
    names = pd.Series("", index=raw.index)
    for mask, label in items:
        names = names + pd.Series(np.where(mask, ", " + label, ""), index=raw.index)
    names = names.str.removeprefix(", ")
    return (" Not recorded: " + names + ".").where(names != "", "")


def _join(parts: list[pd.Series]) -> pd.Series:
    """Concatenate ", x" pieces and drop the leading separator."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out.str.removeprefix(", ")


def build_table(raw: pd.DataFrame, target_column: str = "vascular_age", *,
                include_age: bool | None = None, include_risk_factors: bool | None = None,
                id_column: str = "id", group_column: str = "subject_id",
                say_unrecorded: bool = False) -> pd.DataFrame:
    """Build ``id, group, statement, label, f_*`` from a raw vascular table.

    Args:
        raw: columns (all optional except ``id_column`` and ``target_column``): ``age``,
            ``sex`` (M/F), ``height_cm``, ``weight_kg``, ``bmi``; risk factors
            ``sbp_mmhg``, ``bp_treated``, ``total_chol_mgdl``, ``hdl_mgdl``, ``smoker``,
            ``diabetes``; ECG features (:data:`clinlm.vascular.ecg.FEATURES` names).
        target_column: the label column (``vascular_age`` for synthetic/CSV, ``target``
            or ``age`` for PTB-XL). It never enters the statement or ``f_*``.
        include_age: put chronological age in the statement. Default: yes, unless the
            target is age itself (``target_column == "age"``, ``raw.attrs
            ["target_column"] == "age"`` as set by :func:`load_ptbxl`, or a target column
            numerically equal to ``age``); asking for it then raises ``ValueError``.
        include_risk_factors: put SBP/treatment/cholesterol/HDL/smoking/diabetes in the
            statement (default: whenever those columns exist -- on the synthetic cohort
            vascular age is defined from them).
        id_column, group_column: ids; ``group`` falls back to ``id`` when the group column
            is absent.
        say_unrecorded: end the statement with "Not recorded: ..." naming each item whose
            column is in ``raw`` but empty in that row ("ECG" when every ECG item is), so a
            reader (and the model) is told what nobody entered rather than left to assume
            it. Off for the pipeline's tables (their statements stay as trained); ``ask`` and
            ``serve`` turn it on (``VascularAgeTask.table_from_records``).
    """
    if target_column not in raw.columns:
        raise ValueError(f"target column {target_column!r} not in table")
    if id_column not in raw.columns:
        raise ValueError(f"id column {id_column!r} not in table")
    target_is_age = (target_column == "age" or raw.attrs.get("target_column") == "age"
                     or ("age" in raw.columns and _same(raw["age"], raw[target_column])))
    if include_age is None:
        include_age = not target_is_age
    elif include_age and target_is_age:
        raise ValueError("the target is chronological age: it cannot be in the statement")
    if include_risk_factors is None:
        include_risk_factors = any(c in raw.columns for c in RISK_COLUMNS)

    idx = raw.index
    feats: dict[str, pd.Series] = {}
    empty = pd.Series("", index=idx)

    # --- opening: "A 54-year-old man, height 178 cm, weight 82 kg (BMI 25.9)." -------------
    male = _sex_male(raw)
    noun = pd.Series(np.select([male == 1, male == 0], ["man", "woman"], "person"), index=idx)
    if include_age and target_column != "age":
        age = _rounded(_num(raw, "age"), 0)
        if "age" in raw.columns:
            feats["f_age"] = age
        age_txt = ("A " + _fmt(age, 0) + "-year-old ").where(age.notna(), "")
    else:
        age_txt = empty
    opening = age_txt.where(age_txt != "", "A ") + noun
    if "sex" in raw.columns:
        feats["f_sex_male"] = male
    body = []
    for it in BODY:
        if it.column not in raw.columns:  # absent from this table: no all-empty feature
            continue
        v = _rounded(_num(raw, it.column), it.decimals)
        feats[f"f_{it.column}"] = v
        body.append(_piece(v, f"{it.label} " + _fmt(v, it.decimals) + it.unit))
    bmi = _rounded(_num(raw, "bmi"), 1)
    if "bmi" in raw.columns:
        feats["f_bmi"] = bmi
    weight_present = _num(raw, "weight_kg").notna()
    bmi_txt = pd.Series(np.where(weight_present, " (BMI " + _fmt(bmi, 1) + ")",
                                 ", BMI " + _fmt(bmi, 1)), index=idx).where(bmi.notna(), "")
    body_txt = _join(body) if body else empty
    sentence = opening + (", " + body_txt).where(body_txt != "", "") + bmi_txt + "."

    # --- risk factors ---------------------------------------------------------------------
    if include_risk_factors:
        sbp = _rounded(_num(raw, "sbp_mmhg"), 0)
        treated = _bool(raw, "bp_treated")
        for col, v in (("sbp_mmhg", sbp), ("bp_treated", treated)):
            if col in raw.columns:  # absent from this table: no all-empty feature
                feats[f"f_{col}"] = v
        treat_txt = pd.Series(np.select([treated == 1, treated == 0],
                                        [" (treated)", " (untreated)"], ""), index=idx)
        parts = [_piece(sbp, "systolic blood pressure " + _fmt(sbp, 0) + " mmHg" + treat_txt)]
        for it in RISK_NUMERIC:
            v = _rounded(_num(raw, it.column), it.decimals)
            if it.column in raw.columns:
                feats[f"f_{it.column}"] = v
            parts.append(_piece(v, f"{it.label} " + _fmt(v, it.decimals) + it.unit))
        for col, yes, no in (("smoker", "smoker", "non-smoker"),
                             ("diabetes", "diabetes", "no diabetes")):
            b = _bool(raw, col)
            if col in raw.columns:
                feats[f"f_{col}"] = b
            parts.append(pd.Series(np.select([b == 1, b == 0], [", " + yes, ", " + no], ""),
                                   index=idx))
        risk = _join(parts)
        sentence = sentence + (" Risk factors: " + risk + ".").where(risk != "", "")

    # --- ECG, then the user's other features (csv source: every mapped column is used) ----
    extra = [f for f in raw.attrs.get("features", []) if not f.get("known")]
    parts = []
    for it in ECG_ITEMS:
        if it.column not in raw.columns:
            continue
        v = _rounded(_num(raw, it.column), it.decimals)
        feats[f"f_{it.column}"] = v
        parts.append(_piece(v, f"{it.label} " + _fmt(v, it.decimals) + it.unit))
    other = []
    max_cat = int(raw.attrs.get("max_categories", 20))
    for f in extra:
        if f["name"] not in raw.columns:
            continue
        pieces = parts if f["section"] == "ecg" else other
        if f["kind"] == "category":
            pieces.append(_category(raw[f["name"]], f["name"], f["label"], max_cat, feats))
            continue
        v = _rounded(_num(raw, f["name"]), f["decimals"])
        feats[f"f_{f['name']}"] = v
        pieces.append(_piece(v, f"{f['label']} " + _fmt(v, f["decimals"]) + _suffix(f["unit"])))
    if parts:
        ecg = _join(parts)
        sentence = sentence + (" ECG: " + ecg + ".").where(ecg != "", "")
    if other:
        txt = _join(other)
        sentence = sentence + (" Other: " + txt + ".").where(txt != "", "")

    if say_unrecorded:
        sentence = sentence + _unrecorded(raw, include_age and target_column != "age",
                                          include_risk_factors, extra)

    ids = raw[id_column].astype(str)
    group = raw[group_column].astype(str) if group_column in raw.columns else ids
    out = pd.DataFrame({"id": ids.to_numpy(), "group": group.to_numpy(),
                        "statement": sentence.to_numpy(),
                        "label": pd.to_numeric(raw[target_column], errors="coerce")
                        .astype(float).to_numpy()})
    f = pd.DataFrame({k: v.to_numpy(dtype=float) for k, v in feats.items()})
    return pd.concat([out, f], axis=1)
