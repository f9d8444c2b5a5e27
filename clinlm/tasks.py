"""Per-task data steps behind the generic stages: download and statement building.

Each task has: ``download(cfg, seed, out_dir) -> info`` writing its raw files, and
``build_table(cfg, raw_dir) -> DataFrame`` returning ``id, group, statement, label, f_*``.
``table_from_csv`` turns a user's new CSV into the same table for ``clinlm predict``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def download(task: str, cfg: dict[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch or generate the raw data of ``task`` into ``out_dir``."""
    if task == "noshow":
        from clinlm.noshow.download import download as noshow_download
        return noshow_download(cfg["download"], seed, out_dir / "appointments.csv")
    if task == "vascular_age":
        from clinlm.vascular.pipeline import download as vascular_download
        return vascular_download(cfg["download"], seed, out_dir)
    raise KeyError(f"unknown task {task!r}")


def build_table(task: str, cfg: dict[str, Any], raw_dir: Path) -> pd.DataFrame:
    """The statements table of ``task`` from its raw files."""
    if task == "noshow":
        from clinlm.noshow.download import read_csv
        from clinlm.noshow.statements import build_statements
        return build_statements(read_csv(raw_dir / "appointments.csv"),
                                **cfg.get("statements", {}))
    if task == "vascular_age":
        from clinlm.vascular.pipeline import build_table as vascular_table
        return vascular_table(cfg, raw_dir)
    raise KeyError(f"unknown task {task!r}")


def table_from_csv(task: str, cfg: dict[str, Any], path: Path) -> pd.DataFrame:
    """A user's CSV -> statements table.

    A CSV that already has ``id`` and ``statement`` columns is used as is (``label``
    optional). Otherwise it must be in the task's raw schema (no-show: the Kaggle columns;
    a missing ``No-show`` column is allowed: those outcomes are unknown, so they count as
    attended in the history features and the output has an empty ``y_true``).
    """
    head = pd.read_csv(path, nrows=0)
    if {"id", "statement"} <= set(head.columns):
        df = pd.read_csv(path, dtype={"id": str})
        if "label" not in df.columns:
            df["label"] = None
        return df
    if task == "noshow":
        from clinlm.noshow.download import LABEL_COLUMN, validate
        from clinlm.noshow.statements import build_statements
        raw = pd.read_csv(path, dtype=str)
        unlabeled = LABEL_COLUMN not in raw.columns
        if unlabeled:
            raw[LABEL_COLUMN] = "No"
        table = build_statements(validate(raw, path)[0], **cfg.get("statements", {}))
        if unlabeled:
            table["label"] = None
        return table
    if task == "vascular_age":
        from clinlm.vascular.pipeline import table_from_csv as vascular_from_csv
        return vascular_from_csv(cfg, path)
    raise KeyError(f"unknown task {task!r}")
