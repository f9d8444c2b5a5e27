"""``kind: table``: any clinical table declared in params, behind the generic stages.

A block in ``params.yaml`` is the whole task (no code)::

    tasks:
      readmission:
        kind: table
        type: classification          # binary: the positive label is answered "Yes"
        download:
          source: csv                 # csv (any delimited file, or .parquet) | sklearn
          csv_path: data/readmit.csv
          target_column: readmitted
          positive_label: "yes"
          id_column: encounter_id
          group_column: patient_id    # one patient's rows on one side of the split
          columns:                    # optional: what a column is (else inferred)
            hba1c: {label: HbA1c, unit: "%", range: [3, 20], section: Labs}
          include: ["lab_*"]          # more columns by pattern (kind inferred and reported)
        prompt:
          system: "You predict hospital readmission from a patient's record. Answer Yes or No."
          question: "Will this patient be readmitted within 30 days?"

Raw folder (``data/raw/<task>``): ``table.parquet`` (``id``, ``group``, ``target`` and one
typed column per used feature) and ``columns.json`` (the resolved columns and the target:
how the prediction paths read a new row); ``download.json`` lists every used and dropped
column. Columns: :mod:`clinlm.table.columns`; statements: :mod:`clinlm.table.statements`.

Targets: ``classification`` with two labels (the declared ``positive_label`` becomes the
answer ``Yes``, the other ``No``; every method, metric and page then reads it as the
built-in binary task does), ``multiclass`` (three or more labels, from the data or declared
in ``tasks.<task>.answer.labels``, optionally with the words an LLM answers for each) and
``regression`` (numbers in ``tasks.<task>.answer`` [min, max], which a regression table must
declare, answered with ``answer.decimals`` decimals).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from clinlm.cells import DEFAULT_MISSING, Problems, normalise
from clinlm.io import DataError, read_parquet, write_json, write_parquet
from clinlm.table.columns import Column, ColumnSpec, parse_columns, select_columns
from clinlm.tasks import CsvReading, Task, TaskConfig, sort_labels

log = logging.getLogger(__name__)

TABLE, COLUMNS = "table.parquet", "columns.json"
#: the id column a user's rows get when they carry none: the 1-based data row number
ROW_ID = "_clinlm_row"
#: scikit-learn's built-in clinical tables (shipped inside the package; nothing downloaded)
SKLEARN = ("breast_cancer", "diabetes")


class TableDownload(CsvReading):
    """``tasks.<task>.download`` of a ``kind: table`` task: the one home of its keys."""

    source: Literal["csv", "sklearn"] = Field("csv", description="csv (a delimited file or "
                                              ".parquet) | sklearn (a built-in table)")
    dataset: Literal["breast_cancer", "diabetes"] | None = Field(
        None, description="sklearn: breast_cancer (binary, 569 rows) | diabetes (raw units, "
                          "regression, 442 rows)")
    csv_path: str | None = Field(None, description="csv: the table (.csv/.tsv/.txt, any "
                                                   "separator; .parquet)")
    id_column: str | None = Field(None, description="unique row id column (null: the row "
                                                    "number)")
    group_column: str | None = Field(None, description="patient id column: one patient's "
                                                       "rows on one side of the split")
    target_column: str | None = Field(None, description="the column the model answers "
                                                        "(sklearn: target)")
    positive_label: str | None = Field(None, description="classification: the target value "
                                                         "answered Yes (null: Yes, if the "
                                                         "labels are Yes/No)")
    columns: dict[str, ColumnSpec] = Field(
        {}, description="{column: {label, unit, kind, codes, range, decimals, section, "
                        "out_of_range}} (clinlm.table.columns)")
    include: list[str] | None = Field(None, description="more columns by pattern, e.g. "
                                                        "['lab_*'] (null: every column if "
                                                        "columns is empty, else none)")
    exclude: list[str] = Field([], description="patterns of columns never used")
    out_of_range: Literal["error", "missing"] = Field(
        "error", description="a number outside its range: an error, or read as missing "
                             "(counted in download.json)")
    max_categories: int = Field(20, ge=2, le=255, description="most values a category (or a "
                                                             "multiclass target) may have")

    @field_validator("positive_label", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:  # YAML reads 1 and true as numbers / booleans
        return v if v is None or isinstance(v, str) else str(v).lower() if isinstance(
            v, bool) else str(v)


class TableStatements(TaskConfig):
    """``tasks.<task>.statements`` of a ``kind: table`` task."""

    template: str | None = Field(None, description="your wording, with {name} fields of the "
                                                   "used columns (null: the default "
                                                   "serialisation)")


def _text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A typed table as the stripped strings a delimited file gives (missing -> "")."""
    out = {}
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_float_dtype(s):
            txt = s.map(lambda v: np.format_float_positional(v, trim="-"))
        else:
            txt = s.astype(str)
        out[str(col)] = txt.where(s.notna(), "").str.strip()
    return pd.DataFrame(out)


def sklearn_frame(dataset: str) -> pd.DataFrame:
    """A scikit-learn built-in table with its target as ``target`` (breast_cancer: the
    diagnosis as text, malignant / benign; diabetes: raw units, the disease progression one
    year after baseline)."""
    from sklearn import datasets

    if dataset == "breast_cancer":
        bunch = datasets.load_breast_cancer(as_frame=True)
        frame = bunch.frame.copy()
        frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        return frame
    if dataset == "diabetes":
        return datasets.load_diabetes(as_frame=True, scaled=False).frame.copy()
    raise ValueError(f"unknown sklearn dataset {dataset!r}; known: {list(SKLEARN)}")


class TableTask(Task):
    """Any clinical table declared in params (``kind: table``)."""

    download_config = TableDownload
    statements_config = TableStatements

    @property
    def key(self) -> str:
        return f"tasks.{self.name}"

    # ---- params ---------------------------------------------------------------------------
    def check_section(self, cfg: Mapping[str, Any]) -> None:
        """The prompt asks something; a regression table declares its answer range; the
        source's own keys are given."""
        dl: TableDownload = self.download_settings(cfg)
        question = ((cfg.get("prompt") or {}).get("question") or "").strip()
        if not question:
            raise ValueError(f"{self.key}.prompt.question is empty: say what the model is "
                             "asked, e.g. \"Is the tumour malignant?\"")
        if cfg.get("type") == "regression":
            answer = cfg.get("answer") or {}
            if "min" not in answer or "max" not in answer:
                raise ValueError(f"{self.key}.answer: a regression table declares the range of "
                                 "possible answers, e.g. answer: {min: 25, max: 350}")
        if dl.positive_label is not None and cfg.get("type") != "classification":
            raise ValueError(f"{self.key}.download.positive_label: only a two-label "
                             f"classification has a positive label (this task is "
                             f"{cfg.get('type')})")
        if dl.source == "sklearn" and dl.dataset is None:
            raise ValueError(f"{self.key}.download.dataset is required for source sklearn "
                             f"(one of {list(SKLEARN)})")
        if dl.source == "csv" and not dl.csv_path:
            raise ValueError(f"{self.key}.download.csv_path is required for source csv")
        if dl.source == "csv" and not dl.target_column:
            raise ValueError(f"{self.key}.download.target_column is required: the column "
                             "the model answers")

    # ---- download ---------------------------------------------------------------------------
    def _cells(self, dl: TableDownload, path: str | Path | None = None) -> tuple[pd.DataFrame, str]:
        """The table as stripped strings, and where it came from (for errors)."""
        if path is None and dl.source == "sklearn":
            return _text_frame(sklearn_frame(str(dl.dataset))), f"sklearn:{dl.dataset}"
        path = Path(path or str(dl.csv_path))
        if path.suffix.lower() == ".parquet":
            if not path.is_file():
                raise DataError(path, "file not found")
            try:
                frame = read_parquet(path)
            except Exception as e:  # pyarrow raises several types for a bad file
                raise DataError(path, f"not a readable parquet file: {e}") from None
            if frame.empty:
                raise DataError(path, f"no data rows (columns: {list(frame.columns)[:10]})")
            return _text_frame(frame), str(path)
        from clinlm.io import read_table

        return read_table(path, dl.csv_separator, dl.csv_encoding, f"{self.key}.download"), str(path)

    def _markers(self, dl: TableDownload) -> set[str]:
        return set(DEFAULT_MISSING if dl.missing_values is None else dl.missing_values)

    def _target_column(self, dl: TableDownload) -> str:
        return dl.target_column or ("target" if dl.source == "sklearn" else "")

    def download(self, cfg: Mapping[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
        """Read the table, resolve its columns, check every cell, write ``table.parquet`` and
        ``columns.json``; return the facts for ``download.json`` (every used and dropped
        column, the labels or the target's range, out-of-range values read as missing)."""
        self.check_section(cfg)
        dl: TableDownload = self.download_settings(cfg)
        cells, where = self._cells(dl)
        target = self._target_column(dl)
        roles = [(dl.id_column, "id"), (dl.group_column, "group"), (target, "target")]
        for col, role in roles:
            if col and col not in cells.columns:
                raise DataError(where, f"no column {col!r} ({self.key}.download.{role}_column); "
                                       f"the table has {list(cells.columns)[:40]}", column=col)
        reserved = {c: role for c, role in roles if c}
        markers = self._markers(dl)
        used, dropped = select_columns(
            cells, dl.columns, include=dl.include, exclude=dl.exclude, reserved=reserved,
            markers=markers, max_categories=dl.max_categories, out_of_range=dl.out_of_range,
            key=f"{self.key}.download", where=where)
        problems = Problems(where, list(cells.columns), f"{self.key}.download")
        ids, groups = self._ids(cells, dl, problems, markers)
        values, counted = parse_columns(cells, used, problems, markers, f"{self.key}.download")
        label, target_info = self._target(cfg, dl, cells[target], problems, markers, where)
        problems.raise_all()
        for c in used:  # the values a category may take from now on (prediction refuses others)
            v = values[c.name].dropna()
            if c.kind == "category":
                c.categories = sorted(v.astype(str).unique())
                c.example = str(v.astype(str).mode().iloc[0]) if len(v) else None
            elif c.kind == "number" and len(v):
                c.example = f"{float(v.median()):.{c.decimals}f}"
            elif len(v):
                c.example = "yes" if v.mean() >= 0.5 else "no"
        table = pd.concat([pd.DataFrame({"id": ids, "group": groups, "target": label}),
                           values.reset_index(drop=True)], axis=1)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = {"target": target_info, "id_column": dl.id_column,
                "group_column": dl.group_column, "columns": [c.record() for c in used]}
        write_parquet(out_dir / TABLE, table)
        write_json(out_dir / COLUMNS, spec)
        info = {"data_source": dl.source, "source": where, "n_rows": len(table),
                "n_groups": int(pd.Series(groups).nunique()), "target": target_info,
                "used": [{"column": c.column, "name": c.name, "kind": c.kind,
                          "inferred": c.inferred} for c in used],
                "dropped": dropped, "out_of_range_read_as_missing": counted,
                "id_from_row_number": not dl.id_column}
        log.info("%s: %d rows from %s; %d column(s) used, %d dropped%s", self.name, len(table),
                 where, len(used), len(dropped),
                 "".join(f"; {d['column']}: {d['reason']}" for d in dropped[:10]))
        for col, n in counted.items():
            if n:
                log.warning("%s: %d value(s) of %r outside its range read as missing "
                            "(out_of_range: missing)", self.name, n, col)
        return info

    def _ids(self, cells: pd.DataFrame, dl: TableDownload, problems: Problems,
             markers: set[str]) -> tuple[np.ndarray, np.ndarray]:
        if dl.id_column:
            ids = cells[dl.id_column].astype(str).str.strip()
            problems.add(ids.isin(markers), dl.id_column, "missing id", ids)
            problems.add(ids.duplicated(keep=False) & ~ids.isin(markers), dl.id_column,
                         "duplicate id", ids)
        else:
            ids = pd.Series(np.arange(1, len(cells) + 1).astype(str), index=cells.index)
        if dl.group_column:
            groups = cells[dl.group_column].astype(str).str.strip()
            problems.add(groups.isin(markers), dl.group_column, "missing group id", groups)
        else:
            groups = ids
        return ids.to_numpy(), groups.to_numpy()

    def _target(self, cfg: Mapping[str, Any], dl: TableDownload, cells: pd.Series,
                problems: Problems, markers: set[str], where: str
                ) -> tuple[np.ndarray, dict[str, Any]]:
        """The label column (classification: Yes/No; multiclass: the labels; regression:
        floats) and its facts."""
        col = str(cells.name)
        txt = cells.astype(str).str.strip()
        gone = txt.isin(markers)
        problems.add(gone, col, "missing target", txt,
                     "drop those rows: a row without its answer cannot be trained or scored")
        key = f"{self.key}.download"
        if cfg["type"] == "regression":
            from clinlm.cells import parse_numbers

            y = parse_numbers(txt, gone, col, problems, f"{key}.target_column")
            filled = y.dropna()
            info = {"column": col, "type": "regression",
                    "min": float(filled.min()) if len(filled) else None,
                    "max": float(filled.max()) if len(filled) else None}
            return y.to_numpy(dtype=float), info
        if cfg["type"] == "multiclass":
            return self._classes(cfg, dl, txt, gone, problems, where)
        norm = normalise(txt)
        counts = norm[~gone].value_counts()
        labels = sorted(counts.index)
        if len(labels) != 2:  # report the bad cells first (a label read as a missing marker)
            problems.raise_all()
        if len(labels) < 2:
            raise DataError(where, f"the target has one label only ({labels}): nothing to "
                                   "predict", column=col)
        if len(labels) > 2:
            raise DataError(where, f"the target has {len(labels)} labels ({labels[:10]}); a "
                                   f"classification table has two: set {self.key}.type: "
                                   "multiclass to answer every label, or group them into two "
                                   "in your file", column=col)
        positive = dl.positive_label
        if positive is None:
            if set(labels) != {"yes", "no"}:
                raise ValueError(f"{key}.positive_label: say which label the model answers "
                                 f"Yes; the target's labels are {labels}")
            positive = "yes"
        pos = normalise(pd.Series([positive.strip()], dtype=str)).iloc[0]
        if pos not in labels:
            raise ValueError(f"{key}.positive_label: {positive!r} is not a label of "
                             f"{col!r}; its labels are {labels}")
        label = np.where(gone, None, np.where(norm == pos, "Yes", "No"))
        negative = next(v for v in labels if v != pos)
        info = {"column": col, "type": "classification", "positive_label": pos,
                "negative_label": negative, "counts": {"Yes": int(counts[pos]),
                                                       "No": int(counts[negative])}}
        return label, info

    def _classes(self, cfg: Mapping[str, Any], dl: TableDownload, txt: pd.Series,
                 gone: pd.Series, problems: Problems, where: str
                 ) -> tuple[np.ndarray, dict[str, Any]]:
        """A multiclass target: each label as written (a whole number canonical: ``1.0`` is
        ``1``), in the declared order (``answer.labels``) or the natural one; every label
        needs two rows (one can train, one can test); two labels differing in case only, a
        label the task does not declare or a declared label with no row are errors."""
        col, key = str(txt.name), f"{self.key}.download"
        num = pd.to_numeric(txt.where(~gone), errors="coerce")
        whole = num.notna() & (num == np.floor(num)) & (num.abs() < 2 ** 53)
        code = txt.where(~whole, num.where(whole).astype("Int64").astype(str)).where(~gone)
        problems.raise_all()
        counts = code.dropna().value_counts()
        found = sort_labels(counts.index)
        low = pd.Series(found).str.lower()
        clash = sorted(set(pd.Series(found)[low.duplicated(keep=False)]))
        if clash:
            raise DataError(where, f"labels {clash} differ in case only: write each label one "
                                   "way in your file", column=col)
        if len(found) > dl.max_categories:
            raise DataError(where, f"the target has {len(found)} labels ({found[:10]}, ...); a "
                                   f"multiclass target has at most {dl.max_categories} "
                                   f"({key}.max_categories)", column=col)
        declared = (cfg.get("answer") or {}).get("labels")
        if declared:
            labels = [str(k) for k in declared]
            texts = [str(declared[k]) if isinstance(declared, Mapping) else str(k)
                     for k in declared]
            unknown = [v for v in found if v not in labels]
            if unknown:
                raise DataError(where, f"label(s) {unknown} are not in {self.key}.answer.labels "
                                       f"{labels}: declare them, or drop those rows",
                                column=col)
            absent = [v for v in labels if v not in counts.index]
            if absent:
                raise ValueError(f"{self.key}.answer.labels: {absent} have no row in "
                                 f"{col!r} (its labels: {found})")
        else:
            labels = texts = found
        if len(labels) < 3:
            raise DataError(where, f"the target has {len(labels)} label(s) ({labels}); a "
                                   "multiclass target has three or more (two: type "
                                   "classification with positive_label)", column=col)
        rare = {v: int(counts[v]) for v in labels if counts[v] < 2}
        if rare:
            raise DataError(where, f"label(s) with a single row: {rare}; every label needs two "
                                   "(one can train, one can test): merge or drop those rows",
                            column=col)
        info = {"column": col, "type": "multiclass", "labels": labels,
                "texts": dict(zip(labels, texts, strict=True)),
                "counts": {v: int(counts[v]) for v in labels}}
        return np.where(gone, None, code.to_numpy(dtype=object)), info

    def input_files(self, cfg: Mapping[str, Any]) -> list[Path]:
        dl: TableDownload = self.download_settings(cfg)
        return [Path(dl.csv_path)] if dl.source == "csv" and dl.csv_path else []

    # ---- statements ----------------------------------------------------------------------------
    def spec(self, raw_dir: Path | None = None) -> tuple[list[Column], dict[str, Any]]:
        """The resolved columns and the whole ``columns.json`` of the download stage."""
        from clinlm.paths import raw_dir as default_raw

        path = Path(raw_dir if raw_dir is not None else default_raw(self.name)) / COLUMNS
        if not path.is_file():
            raise DataError(path, f"not found: run the pipeline's download stage for "
                                  f"{self.name} first (dvc repro download@{self.name})")
        key = (str(path), path.stat().st_mtime_ns)  # read once per file version (serve)
        cache = self.__dict__.setdefault("_spec_cache", {})
        if key not in cache:
            spec = json.loads(path.read_text())
            cache.clear()
            cache[key] = ([Column.from_record(r) for r in spec["columns"]], spec)
        used, spec = cache[key]
        return [Column.from_record(c.record()) for c in used], spec  # callers may edit theirs

    def build_table(self, cfg: Mapping[str, Any], raw_dir: Path) -> pd.DataFrame:
        """``id, group, statement, label, f_*`` from the raw folder."""
        used, _ = self.spec(raw_dir)
        path = Path(raw_dir) / TABLE
        if not path.is_file():
            raise DataError(path, "raw table not found (run the download stage first)")
        raw = read_parquet(path)
        return self._statements(cfg, raw, used)

    def _statements(self, cfg: Mapping[str, Any], raw: pd.DataFrame, used: list[Column],
                    say_unrecorded: bool = False) -> pd.DataFrame:
        from clinlm.table.statements import check_template, features, statements

        template = self.statement_settings(cfg).template
        if template is not None:
            check_template(template, used, f"{self.key}.statements.template")
        text = statements(raw, used, template, say_unrecorded=say_unrecorded)
        head = pd.DataFrame({"id": raw["id"].astype(str).to_numpy(),
                             "group": raw["group"].astype(str).to_numpy(),
                             "statement": text.to_numpy(), "label": raw["target"].to_numpy()})
        return pd.concat([head, features(raw, used).reset_index(drop=True)], axis=1)

    # ---- the prediction paths ------------------------------------------------------------------
    def input_fields(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One field per used column, as training read it (``columns.json``)."""
        used, _ = self.spec()
        out = []
        for c in used:
            kind = {"number": "number", "boolean": "bool", "category": "choice"}[c.kind]
            choices = c.categories if c.kind == "category" else (
                ["yes", "no"] if c.kind == "boolean" else None)
            help_ = c.label + (f" ({c.unit})" if c.unit else "")
            if c.range is not None:
                help_ += f", {c.range[0]:g} to {c.range[1]:g}"
            out.append({"name": c.column, "label": c.label[:1].upper() + c.label[1:],
                        "kind": kind, "unit": c.unit or None, "choices": choices,
                        "required": False, "example": c.example, "help": help_})
        return out

    def records_frame(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                      source: str) -> tuple[pd.DataFrame, dict[int, tuple[str | None, str]]]:
        """Records -> the used columns' cells (+ the record's number as its id); a record
        with no field given is refused. A category's raw code or its meaning are accepted."""
        used, _ = self.spec()
        names = [c.column for c in used]
        refused = {i: (None, "no field given") for i, rec in enumerate(records, 1)
                   if all(rec.get(k) in (None, "") for k in names)}
        rows = []
        for rec in records:
            row = {}
            for c in used:
                v = rec.get(c.column)
                if isinstance(v, bool):
                    v = "yes" if v else "no"
                if c.codes is not None and v is not None and str(v) in c.codes.values():
                    v = next(k for k, m in c.codes.items() if m == str(v))
                row[c.column] = "" if v is None else str(v)
            rows.append(row)
        raw = pd.DataFrame(rows, columns=names)
        raw[ROW_ID] = [str(i) for i in range(1, len(records) + 1)]
        return raw, refused

    def csv_frame(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """The cells of a user's table (read like the csv source); without its id column the
        data line number is the id."""
        dl: TableDownload = self.download_settings(cfg)
        raw, _ = self._cells(dl, path)
        if not (dl.id_column and dl.id_column in raw.columns):
            raw[ROW_ID] = np.arange(1, len(raw) + 1).astype(str)
        return raw

    def frame_table(self, cfg: Mapping[str, Any], raw: pd.DataFrame,
                    source: str | Path, *, from_records: bool = False) -> pd.DataFrame:
        """Cells -> statements, read with the training columns (every bad cell listed); the
        target column may be absent (label then empty)."""
        dl: TableDownload = self.download_settings(cfg)
        used, _ = self.spec()
        absent = [c.column for c in used if c.column not in raw.columns]
        if absent:
            raise DataError(source, f"missing column(s) {absent}; the model reads "
                                    f"{[c.column for c in used]}", column=absent[0])
        markers = self._markers(dl)
        problems = Problems(source, list(raw.columns), f"{self.key}.download")
        values, _ = parse_columns(raw, used, problems, markers, f"{self.key}.download")
        problems.raise_all()
        ids = raw[self._id_column(cfg, raw)].astype(str).to_numpy()
        group = (raw[dl.group_column].astype(str).to_numpy()
                 if dl.group_column and dl.group_column in raw.columns else ids)
        head = pd.DataFrame({"id": ids, "group": group, "target": None})
        frame = pd.concat([head, values.reset_index(drop=True)], axis=1)
        return self._statements(cfg, frame, used, say_unrecorded=from_records)

    def frame_ids(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> list[str | None]:
        col = self._id_column(cfg, raw)
        return [str(v).strip() or None for v in raw[col].fillna("")]

    def _id_column(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> str:
        dl: TableDownload = self.download_settings(cfg)
        return dl.id_column if dl.id_column and dl.id_column in raw.columns else ROW_ID
