"""A ``kind: table`` task's rows as English statements, and the ``f_*`` features beside them.

The default serialisation prints the used columns in table order, grouped by ``section``
(the untitled part first, then one ``Section: ...`` sentence per section in order of first
appearance), each item as ``<label> <value> <unit>`` (numbers, rounded to the column's
decimals) or ``<label>: <value>`` (categories, codes applied; booleans as yes/no). A missing
value is left out; for a case a person typed in (``ask``, the page), the statement ends with
"Not recorded: ..." naming each empty field, so nobody reads an omission as normal.

``statements.template`` replaces that with the user's wording: ``{name}`` fields are the
columns' feature names (:func:`clinlm.table.columns.feature_name`), filled with the same
formatted values ("not recorded" where missing). The ``f_*`` features carry exactly what the
statement says: numbers rounded as printed, booleans 0/1, categories as text (the gbdt reads
them as categoricals).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from clinlm.table.columns import Column


def _number_text(values: pd.Series, decimals: int) -> pd.Series:
    """Numbers as printed ("" where missing), vectorised."""
    if decimals == 0:
        txt = values.round().astype("Int64").astype(str)
    else:
        txt = pd.Series(np.char.mod(f"%.{decimals}f", values.fillna(0).to_numpy(float)),
                        index=values.index)
    return txt.where(values.notna(), "")


def value_texts(frame: pd.DataFrame, used: Sequence[Column]) -> dict[str, pd.Series]:
    """Each column's printed value ("" where missing), by feature name."""
    out = {}
    for c in used:
        v = frame[c.name]
        if c.kind == "number":
            txt = _number_text(v, c.decimals)
            txt = (txt + (" " + c.unit if c.unit else "")).where(txt != "", "")
        elif c.kind == "boolean":
            txt = pd.Series(np.select([v == 1, v == 0], ["yes", "no"], ""), index=frame.index)
        else:
            txt = v.astype(object).where(v.notna(), "").astype(str)
        out[c.name] = txt
    return out


def template_fields(template: str) -> list[str]:
    """The ``{name}`` fields of a template (a malformed one is a ``ValueError``)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def check_template(template: str, used: Sequence[Column], key: str) -> None:
    """Every field of ``template`` must name a used column (errors name the key)."""
    try:
        fields = template_fields(template)
    except ValueError as e:
        raise ValueError(f"{key}: not a valid template ({e}); write fields as {{name}}") from None
    known = [c.name for c in used]
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ValueError(f"{key}: {unknown} name no used column; the fields are {known}")
    if not fields:
        raise ValueError(f"{key}: the template names no column, so every statement would be "
                         f"the same; the fields are {known}")


def statements(frame: pd.DataFrame, used: Sequence[Column], template: str | None = None,
               say_unrecorded: bool = False) -> pd.Series:
    """One statement per row of ``frame`` (typed values by feature name)."""
    texts = value_texts(frame, used)
    idx = frame.index
    if template is not None:
        parts = string.Formatter().parse(template)
        out = pd.Series("", index=idx)
        for literal, name, _spec, _conv in parts:
            out = out + literal
            if name is not None:
                t = texts[name]
                out = out + t.where(t != "", "not recorded")
    else:
        sections: dict[str, list[Column]] = {}
        for c in used:
            sections.setdefault(c.section, []).append(c)
        out = pd.Series("", index=idx)
        for title, cols in sorted(sections.items(), key=lambda kv: kv[0] != ""):
            body = pd.Series("", index=idx)
            for c in cols:
                t = texts[c.name]
                item = (c.label + " " + t) if c.kind == "number" else (c.label + ": " + t)
                body = body + pd.Series(np.where(t != "", ", " + item, ""), index=idx)
            body = body.str.removeprefix(", ")
            head = f"{title}: " if title else ""
            sentence = (head + body.str[:1].str.upper() + body.str[1:] + ".") if not title \
                else (head + body + ".")
            out = out + pd.Series(np.where(body != "", " " + sentence, ""), index=idx)
        out = out.str.removeprefix(" ")
    if say_unrecorded:
        names = pd.Series("", index=idx)
        for c in used:
            names = names + pd.Series(np.where(texts[c.name] == "", ", " + c.label, ""),
                                      index=idx)
        names = names.str.removeprefix(", ")
        out = out + (" Not recorded: " + names + ".").where(names != "", "")
    return out.str.strip()


def features(frame: pd.DataFrame, used: Sequence[Column]) -> pd.DataFrame:
    """``f_<name>`` per used column: numbers and booleans as floats, categories as text."""
    out = {}
    for c in used:
        v = frame[c.name]
        out[f"f_{c.name}"] = (v.astype(object).where(v.notna(), None) if c.kind == "category"
                              else v.astype(float))
    return pd.DataFrame(out, index=frame.index)
