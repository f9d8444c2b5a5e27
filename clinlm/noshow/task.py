"""The no-show task behind the generic stages (registered as ``noshow`` in clinlm.tasks).

Raw folder (``data/raw/noshow``): ``appointments.csv`` in the Kaggle format
(:mod:`clinlm.noshow.sources`). Statements: :func:`clinlm.noshow.statements.build_statements`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from clinlm.noshow.schema import LABEL_COLUMN, read_csv, validate
from clinlm.noshow.sources import NoshowDownload
from clinlm.noshow.sources import download as download_source
from clinlm.noshow.statements import build_statements
from clinlm.tasks import Task, TaskConfig

RAW_CSV = "appointments.csv"


class NoshowStatements(TaskConfig):
    """``tasks.noshow.statements``: the one home of its keys and defaults (``null`` = default)."""

    #: a sentence and features on earlier appointments / no-shows (strictly earlier days)
    history: bool = True


class NoshowTask(Task):
    """Kaggle "Medical Appointment No Shows": will the patient miss the appointment?"""

    name: ClassVar[str] = "noshow"
    download_config: ClassVar[type[TaskConfig]] = NoshowDownload
    statements_config: ClassVar[type[TaskConfig]] = NoshowStatements

    def download(self, cfg: Mapping[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
        return download_source(self.download_settings(cfg), seed, Path(out_dir) / RAW_CSV)

    def build_table(self, cfg: Mapping[str, Any], raw_dir: Path) -> pd.DataFrame:
        opts = self.statement_settings(cfg)
        return build_statements(read_csv(Path(raw_dir) / RAW_CSV), history=opts.history)

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
        table = build_statements(validate(raw, path)[0], history=opts.history)
        if unlabeled:
            table["label"] = None
        return table
