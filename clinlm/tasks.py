"""Registry of tasks: ``params.yaml`` names one per ``tasks.<name>`` section.

A task owns its data steps behind the generic stages:

* ``download(cfg, seed, out_dir) -> info``: write its raw files into ``out_dir``;
* ``build_table(cfg, raw_dir) -> DataFrame``: ``id, group, statement, label, f_*``;
* ``table_from_csv(cfg, path) -> DataFrame``: a user's new CSV -> the same table
  (``clinlm predict``);
* ``input_fields(cfg)`` / ``table_from_records(cfg, records)``: one row given as fields
  (``clinlm ask``, ``clinlm serve``).

``cfg`` is always the whole ``tasks.<name>`` section. The keys of its ``download`` and
``statements`` sections, with their defaults, have one home: the task's pydantic models
:attr:`Task.download_config` and :attr:`Task.statements_config` (unknown keys are errors).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from clinlm.config import Strict, import_object, parse_section

log = logging.getLogger(__name__)

# name -> "module:Class"; modules are imported only when the task is used.
TASKS: dict[str, str] = {
    "noshow": "clinlm.noshow.task:NoshowTask",
    "vascular_age": "clinlm.vascular.task:VascularAgeTask",
}


class TaskConfig(BaseModel):
    """Base of a task's config sections: unknown keys are errors; ``null`` means the default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data


class _NoOptions(TaskConfig):
    """A section with no keys (a task without statement options)."""


# ---- the task section (every task) -------------------------------------------------

class SplitConfig(Strict):
    test_size: float = Field(0.2, gt=0, lt=1)
    group_by_patient: bool = True  # every patient on one side of the split


class FormatConfig(Strict):
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # Cohere eval file: this share of TRAIN


class PromptConfig(Strict):
    """The instruction and the question; ``{target}`` in either is replaced by ``target``
    (what the answer is, e.g. "vascular age" or "age": the name of the column you map)."""

    system: str = ""
    question: str = ""
    target: str | None = None

    @model_validator(mode="after")
    def _target_given(self) -> PromptConfig:
        if self.target is None and "{target}" in self.system + self.question:
            raise ValueError("prompt uses {target}: set prompt.target (what the answer is, "
                             "e.g. vascular age)")
        return self


class AnswerConfig(Strict):
    """Regression answers: numeric decoding enumerates every integer in ``[min, max]``."""

    min: int = Field(18, ge=0)
    max: int = Field(110, ge=0)


class ImagesConfig(Strict):
    width_px: PositiveInt = 768
    height_px: PositiveInt = 512


class TaskSection(Strict):
    """``tasks.<name>``: the keys every task has (download/statements: the task's own configs)."""

    type: Literal["classification", "regression"]
    download: dict[str, Any] = {}    # validated by the task's own download_config
    statements: dict[str, Any] = {}  # validated by the task's own statements_config
    split: SplitConfig = SplitConfig()
    format: FormatConfig = FormatConfig()
    prompt: PromptConfig = PromptConfig()
    answer: AnswerConfig = AnswerConfig()
    images: ImagesConfig = ImagesConfig()


class Task:
    """One task's data steps. Subclasses set ``name`` and the two config models."""

    name: ClassVar[str] = ""
    #: the ``download`` section: its keys, types and defaults (one home)
    download_config: ClassVar[type[TaskConfig]] = _NoOptions
    #: the ``statements`` section: its keys, types and defaults (one home)
    statements_config: ClassVar[type[TaskConfig]] = _NoOptions

    def download_settings(self, cfg: Mapping[str, Any]) -> Any:
        """``cfg["download"]`` as a :attr:`download_config` instance."""
        return parse_section(self.download_config, cfg.get("download"),
                             f"tasks.{self.name}.download")

    def statement_settings(self, cfg: Mapping[str, Any]) -> Any:
        """``cfg["statements"]`` as a :attr:`statements_config` instance."""
        return parse_section(self.statements_config, cfg.get("statements"),
                             f"tasks.{self.name}.statements")

    def download(self, cfg: Mapping[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
        """Fetch or generate the raw data into ``out_dir``; return facts for download.json."""
        raise NotImplementedError

    def input_files(self, cfg: Mapping[str, Any]) -> list[Path]:
        """The user's files :meth:`download` reads (hashed by the ``inputs`` stage, so editing
        one reruns download); none for generated or hub sources."""
        return []

    def build_table(self, cfg: Mapping[str, Any], raw_dir: Path) -> pd.DataFrame:
        """The statements table (``id, group, statement, label, f_*``) from the raw files."""
        raise NotImplementedError

    def table_from_csv(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """A user's CSV -> statements table.

        A CSV that already has ``id`` and ``statement`` columns is used as is (``label``
        optional, else empty). Otherwise :meth:`table_from_raw_csv` reads it in the task's
        raw schema.
        """
        head = pd.read_csv(path, nrows=0)
        if {"id", "statement"} <= set(head.columns):
            df = pd.read_csv(path, dtype={"id": str})
            if "label" not in df.columns:
                df["label"] = None
            return df
        return self.table_from_raw_csv(cfg, Path(path))

    def table_from_raw_csv(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """A CSV in the task's raw schema -> statements table (label empty if unknown)."""
        raise NotImplementedError

    def input_fields(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The fields one row is described by (``clinlm ask``, the served page's form).

        Each: ``{"name", "label", "kind": number|text|choice|date|bool, "unit", "choices",
        "required", "example", "help"}``. ``label`` (and ``unit``) is what a reader sees;
        ``example`` is a placeholder, never a value: an optional field left empty must be
        said as not recorded by :meth:`table_from_records`, not filled in.
        """
        raise NotImplementedError

    def table_from_records(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                           source: str = "request") -> pd.DataFrame:
        """Rows given as ``{field: value}`` dicts -> statements table (``label`` empty).

        Validated like the task's csv source; unknown fields are errors. Raises
        :class:`~clinlm.io.DataError` naming ``source``, the 1-based record and the field.
        """
        raise NotImplementedError


def check_records(records: Any, fields: list[str], source: str) -> None:
    """The checks every ``table_from_records`` shares: a non-empty list of objects whose keys
    are all known fields (a :class:`~clinlm.io.DataError` names the record and the field)."""
    from clinlm.io import DataError

    if not records:
        raise DataError(source, "no record given")
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, Mapping):
            raise DataError(source, f"a record must be an object of fields, got "
                                    f"{type(rec).__name__}", row=i)
        extra = [k for k in rec if k not in fields]
        if extra:
            raise DataError(source, f"unknown field; the fields are {fields}", row=i,
                            column=str(extra[0]))


def get_task(name: str) -> Task:
    """Instantiate the task registered under ``name``."""
    return import_object(TASKS, name, "task")()


def download(task: str, cfg: dict[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch or generate the raw data of ``task`` into ``out_dir``."""
    return get_task(task).download(cfg, seed, Path(out_dir))


def build_table(task: str, cfg: dict[str, Any], raw_dir: Path) -> pd.DataFrame:
    """The statements table of ``task`` from its raw files."""
    return get_task(task).build_table(cfg, Path(raw_dir))


def table_from_csv(task: str, cfg: dict[str, Any], path: Path) -> pd.DataFrame:
    """A user's CSV -> statements table (see :meth:`Task.table_from_csv`)."""
    return get_task(task).table_from_csv(cfg, Path(path))


__all__ = ["TASKS", "Task", "TaskConfig", "build_table", "download", "get_task",
           "parse_section", "table_from_csv"]
