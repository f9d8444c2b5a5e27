"""The no-show task behind the generic stages (registered as ``noshow`` in clinlm.tasks).

Raw folder (``data/raw/noshow``): ``appointments.csv`` in the Kaggle format
(:mod:`clinlm.noshow.sources`). Statements: :func:`clinlm.noshow.statements.build_statements`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from clinlm.io import DataError
from clinlm.noshow.schema import LABEL_COLUMN, read_csv, read_raw, validate
from clinlm.noshow.sources import NoshowDownload
from clinlm.noshow.sources import download as download_source
from clinlm.noshow.statements import HOUR, OPTIONAL_FLAGS, build_statements
from clinlm.tasks import Task, TaskConfig

RAW_CSV = "appointments.csv"


class NoshowStatements(TaskConfig):
    """``tasks.noshow.statements``: the one home of its keys and defaults (``null`` = default)."""

    #: a sentence and features on earlier appointments / no-shows (strictly earlier days)
    history: bool = True
    #: ``full`` English sentences, or ``compact``: the same facts in ~37 % fewer tokens
    #: (shorter prompts, faster fine-tuning and scoring); the ``f_*`` features do not change
    style: Literal["full", "compact"] = "full"


class NoshowTask(Task):
    """Kaggle "Medical Appointment No Shows": will the patient miss the appointment?"""

    name = "noshow"
    task_types: ClassVar[tuple[str, ...]] = ("classification",)
    download_config: ClassVar[type[TaskConfig]] = NoshowDownload
    statements_config: ClassVar[type[TaskConfig]] = NoshowStatements

    def download(self, cfg: Mapping[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
        return download_source(self.download_settings(cfg), seed, Path(out_dir) / RAW_CSV)

    def input_files(self, cfg: Mapping[str, Any]) -> list[Path]:
        """The csv source's file (the Kaggle download is pinned by its handle)."""
        dl = self.download_settings(cfg)
        return [Path(dl.csv_path)] if dl.source == "csv" and dl.csv_path else []

    def build_table(self, cfg: Mapping[str, Any], raw_dir: Path) -> pd.DataFrame:
        opts = self.statement_settings(cfg)
        return build_statements(read_csv(Path(raw_dir) / RAW_CSV), history=opts.history,
                                style=opts.style)

    def table_from_raw_csv(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """The Kaggle columns; a missing ``No-show`` column (or an empty cell) is allowed.

        Those outcomes are unknown, so they count as attended in the history features and
        the output has an empty ``label``. All or nothing: the first bad cell (a negative age
        too) raises; ``clinlm predict`` answers the other rows (:meth:`screen_csv`).
        """
        return self.frame_table(cfg, self.csv_frame(cfg, path), path)

    def input_fields(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Kaggle columns one appointment is described by (``ask``, the page's form)."""
        return [dict(f) for f in _FIELDS]

    def records_frame(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                      source: str) -> tuple[pd.DataFrame, dict[int, tuple[str | None, str]]]:
        """Appointments given as ``{field: value}`` -> Kaggle cells (label column absent).

        Flags also accept ``true``/``false``/``yes``/``no``; ``PatientId`` / ``AppointmentID``
        are optional (default: the record's number). Each record is a separate patient with
        no earlier appointments, unless records share a ``PatientId`` (then the earlier ones
        are its history, outcomes unknown = attended). A missing required field refuses the
        record, naming it; an optional field left out stays an empty cell, which
        :meth:`frame_table` tells as "not recorded" (never taken as 0).
        """
        rows, refused = [], {}
        for i, rec in enumerate(records, 1):
            row = {}
            for f in _FIELDS:
                v = rec.get(f["name"])
                if v is None or (isinstance(v, str) and not v.strip()):
                    if f["required"] and i not in refused:
                        refused[i] = (f["name"], f"missing required field: {f['label']} "
                                                 f"({f['help']})")
                    v = ""
                if f["kind"] == "bool":
                    v = _FLAG.get(str(v).strip().lower(), v)
                row[f["name"]] = str(v)
            row["PatientId"] = row["PatientId"] or str(i)
            row["AppointmentID"] = row["AppointmentID"] or str(i)
            rows.append(row)
        return pd.DataFrame(rows, columns=[f["name"] for f in _FIELDS]), refused

    def csv_frame(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """Every cell of a Kaggle-format ``.csv`` (or a ``.zip`` holding one) as text; read
        with the csv source's separator and encoding when that is the task's source."""
        if not Path(path).is_file():
            raise DataError(path, "file not found")
        dl = self.download_settings(cfg)
        separator = dl.csv_separator if dl.source == "csv" else ","
        return read_raw(Path(path), separator, dl.csv_encoding)

    def frame_table(self, cfg: Mapping[str, Any], raw: pd.DataFrame,
                    source: str | Path, *, from_records: bool = False) -> pd.DataFrame:
        """The Kaggle validation with negative ages refused (the training filter drops them),
        then the statements; an absent or empty ``No-show`` is an unknown label.

        Fields a person gave (``from_records``): an empty optional flag is "not recorded" in
        the statement and NaN in its ``f_*`` feature (the ``0`` put there only passes the
        Kaggle validation and is never read), and a booking day without its time has no hour
        to tell. A CSV is read exactly as the pipeline reads the Kaggle file (an empty flag is
        refused), so a row predicted from a file reads as it did in training.
        """
        raw = raw.copy()
        if LABEL_COLUMN in raw.columns:
            unknown = raw[LABEL_COLUMN].fillna("").astype(str).str.strip().eq("").to_numpy()
        else:
            unknown = np.ones(len(raw), dtype=bool)
            raw[LABEL_COLUMN] = ""
        raw.loc[unknown, LABEL_COLUMN] = "No"
        unrecorded = _fill_unrecorded(raw) if from_records else None
        opts = self.statement_settings(cfg)
        table = build_statements(validate(raw, source, refuse_negative_age=True)[0],
                                 history=opts.history, style=opts.style, unrecorded=unrecorded)
        table["label"] = table["label"].astype(object).where(~unknown, None)
        return table

    def frame_ids(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> list[str | None]:
        """``AppointmentID`` (a record without one: its number)."""
        if "AppointmentID" not in raw.columns:
            return [None] * len(raw)
        return [str(v).strip() or None for v in raw["AppointmentID"].fillna("")]


def _fill_unrecorded(raw: pd.DataFrame) -> pd.DataFrame:
    """Which optional cells a person left empty (and whether the booking has a time); the
    empty flags are set to ``0`` in ``raw`` in place, only to pass the Kaggle validation:
    ``build_statements`` reads them as "not recorded", never as 0."""
    unrecorded = pd.DataFrame(index=range(len(raw)))
    for c in OPTIONAL_FLAGS:
        cells = raw[c] if c in raw.columns else pd.Series("", index=raw.index)
        empty = cells.fillna("").astype(str).str.strip().eq("").to_numpy()
        unrecorded[c] = empty
        raw[c] = np.where(empty, "0", cells)
    unrecorded[HOUR] = ~raw["ScheduledDay"].fillna("").astype(str).str.contains(_TIME).to_numpy()
    return unrecorded


_TIME = re.compile(r"\d[T ]\d{1,2}:\d{2}")
_FLAG = {"true": "1", "false": "0", "yes": "1", "no": "0", "1": "1", "0": "0"}
#: ``label``/``unit``: what a reader sees (the page, ``ask --list-fields``); ``name``: the
#: Kaggle column the field fills. An optional field left empty is "not recorded", never 0.
_FIELDS: tuple[dict[str, Any], ...] = (
    {"name": "Gender", "label": "Sex", "kind": "choice", "unit": None, "choices": ["F", "M"],
     "required": True, "example": "F", "help": "F or M"},
    {"name": "Age", "label": "Age", "kind": "number", "unit": "years", "choices": None,
     "required": True, "example": 45, "help": "age in years (0-115)"},
    {"name": "ScheduledDay", "label": "Booked on", "kind": "date", "unit": None,
     "choices": None, "required": True, "example": "2016-04-25 10:30",
     "help": "when the appointment was booked (day, and time if known)"},
    {"name": "AppointmentDay", "label": "Appointment day", "kind": "date", "unit": None,
     "choices": None, "required": True, "example": "2016-05-02",
     "help": "the day of the appointment"},
    {"name": "Neighbourhood", "label": "Neighbourhood", "kind": "text", "unit": None,
     "choices": None, "required": True, "example": "JARDIM CAMBURI",
     "help": "where the appointment takes place"},
    {"name": "Scholarship", "label": "Bolsa Familia welfare", "kind": "bool", "unit": None,
     "choices": None, "required": False, "example": 0,
     "help": "enrolled in the Bolsa Familia welfare programme"},
    {"name": "Hipertension", "label": "Hypertension", "kind": "bool", "unit": None,
     "choices": None, "required": False, "example": 0, "help": "hypertension"},
    {"name": "Diabetes", "label": "Diabetes", "kind": "bool", "unit": None, "choices": None,
     "required": False, "example": 0, "help": "diabetes"},
    {"name": "Alcoholism", "label": "Alcoholism", "kind": "bool", "unit": None,
     "choices": None, "required": False, "example": 0, "help": "alcoholism"},
    {"name": "Handcap", "label": "Disability level", "kind": "number", "unit": None,
     "choices": None, "required": False, "example": 0, "help": "number of handicaps (0-4)"},
    {"name": "SMS_received", "label": "SMS reminder sent", "kind": "bool", "unit": None,
     "choices": None, "required": False, "example": 1, "help": "an SMS reminder was sent"},
    {"name": "PatientId", "label": "Patient id", "kind": "text", "unit": None,
     "choices": None, "required": False, "example": None,
     "help": "optional; records sharing it form one patient's history"},
    {"name": "AppointmentID", "label": "Appointment id", "kind": "text", "unit": None,
     "choices": None, "required": False, "example": None, "help": "optional"},
)
