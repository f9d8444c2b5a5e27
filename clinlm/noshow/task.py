"""The no-show task behind the generic stages (registered as ``noshow`` in clinlm.tasks).

Raw folder (``data/raw/noshow``): ``appointments.csv`` in the Kaggle format
(:mod:`clinlm.noshow.sources`). Statements: :func:`clinlm.noshow.statements.build_statements`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from clinlm.io import DataError
from clinlm.noshow.schema import LABEL_COLUMN, read_csv, validate
from clinlm.noshow.sources import NoshowDownload
from clinlm.noshow.sources import download as download_source
from clinlm.noshow.statements import HOUR, OPTIONAL_FLAGS, build_statements
from clinlm.tasks import Task, TaskConfig, check_records

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

    name: ClassVar[str] = "noshow"
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
        """The Kaggle columns; a missing ``No-show`` column is allowed.

        Those outcomes are unknown, so they count as attended in the history features and
        the output has an empty ``label``.
        """
        opts = self.statement_settings(cfg)
        raw = pd.read_csv(path, dtype=str)
        unlabeled = LABEL_COLUMN not in raw.columns
        if unlabeled:
            raw[LABEL_COLUMN] = "No"
        table = build_statements(validate(raw, path)[0], history=opts.history,
                                 style=opts.style)
        if unlabeled:
            table["label"] = None
        return table

    def input_fields(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Kaggle columns one appointment is described by (``ask``, the page's form)."""
        return [dict(f) for f in _FIELDS]

    def table_from_records(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                           source: str = "request") -> pd.DataFrame:
        """Statements table (``label`` empty) for appointments given as ``{field: value}``.

        The Kaggle validation (:func:`~clinlm.noshow.schema.validate`); flags also accept
        ``true``/``false``/``yes``/``no``; ``PatientId`` / ``AppointmentID`` are optional. A
        required field left out is an error naming it; an optional flag left out is "not
        recorded" in the statement and NaN in its ``f_*`` feature (never taken as 0).
        Each record is a separate patient with no earlier appointments, unless records share a
        ``PatientId`` (then the earlier ones are its history, outcomes unknown = attended).
        A :class:`~clinlm.io.DataError` names ``source``, the 1-based record and the field.
        """
        names = [f["name"] for f in _FIELDS]
        check_records(records, names, source)
        rows, unrecorded = [], []
        for i, rec in enumerate(records, 1):
            row, unknown = {}, {}
            for f in _FIELDS:
                v = rec.get(f["name"])
                if v is None or (isinstance(v, str) and not v.strip()):
                    if f["required"]:
                        raise DataError(source, f"missing required field: {f['label']} "
                                                f"({f['help']})", row=i, column=f["name"])
                    # said "not recorded" in the statement, NaN in f_*; the 0 only passes
                    # the Kaggle validation and is never read (build_statements' unrecorded)
                    unknown[f["name"]] = True
                    v = "0" if f["name"] in OPTIONAL_FLAGS else ""
                if f["kind"] == "bool":
                    v = _FLAG.get(str(v).strip().lower(), v)
                row[f["name"]] = str(v)
            row["PatientId"] = row["PatientId"] or str(i)
            row["AppointmentID"] = row["AppointmentID"] or str(i)
            rows.append(row)
            unrecorded.append({c: unknown.get(c, False) for c in OPTIONAL_FLAGS})
            # a booking day without its time: no hour to tell (not midnight)
            unrecorded[-1][HOUR] = not _TIME.search(row["ScheduledDay"])
        raw = pd.DataFrame(rows)
        raw[LABEL_COLUMN] = "No"
        opts = self.statement_settings(cfg)
        table = build_statements(validate(raw, source)[0], history=opts.history,
                                 style=opts.style, unrecorded=pd.DataFrame(unrecorded))
        table["label"] = None
        return table


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
