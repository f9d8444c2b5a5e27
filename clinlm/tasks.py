"""Registry of tasks: ``params.yaml`` names one per ``tasks.<name>`` section.

A task owns its data steps behind the generic stages:

* ``download(cfg, seed, out_dir) -> info``: write its raw files into ``out_dir``;
* ``build_table(cfg, raw_dir) -> DataFrame``: ``id, group, statement, label, f_*``;
* ``table_from_csv(cfg, path) -> DataFrame``: a user's new CSV -> the same table
  (``clinlm predict``);
* ``input_fields(cfg)`` / ``table_from_records(cfg, records)``: one row given as fields
  (``clinlm ask``, ``clinlm serve``);
* ``screen_records(cfg, records)`` / ``screen_csv(cfg, path)``: the prediction paths' form of
  the two above: every input row accepted or refused in place (:class:`Screened`), built
  from the task's hooks ``records_frame``, ``csv_frame``, ``frame_table`` and ``frame_ids``.

``cfg`` is always the whole ``tasks.<name>`` section. The keys of its ``download`` and
``statements`` sections, with their defaults, have one home: the task's pydantic models
:attr:`Task.download_config` and :attr:`Task.statements_config` (unknown keys are errors).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from clinlm.config import Strict, import_object, parse_section

log = logging.getLogger(__name__)

# kind -> "module:Class"; modules are imported only when the task is used. A built-in task's
# kind is its own name (``tasks.noshow``); ``kind: table`` declares any other table in params.
TASKS: dict[str, str] = {
    "noshow": "clinlm.noshow.task:NoshowTask",
    "vascular_age": "clinlm.vascular.task:VascularAgeTask",
    "table": "clinlm.table.task:TableTask",
}
#: the kinds that any number of ``tasks.<name>`` sections may declare (the others are a name)
GENERIC_KINDS = ("table",)


def sort_labels(labels: Any) -> list[str]:
    """Labels in their natural order: numerically when every label is a number (``2`` before
    ``10``), else alphabetically."""
    labels = sorted({str(v) for v in labels})
    try:
        return sorted(labels, key=float)
    except ValueError:
        return labels



class TaskConfig(BaseModel):
    """Base of a task's config sections: unknown keys are errors; ``null`` means the default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data


class CsvReading(TaskConfig):
    """How a user's delimited file is read (:func:`clinlm.io.read_table`): the keys every csv
    source shares (the vascular-age task's ``csv`` source, a ``kind: table`` task's)."""

    csv_separator: str | None = Field(None, description="csv: the separator (null: sniffed)")
    csv_encoding: str = Field("utf-8", description="csv: text encoding (cp1252/latin-1 for "
                                                   "files saved by Excel on Windows)")
    missing_values: list[str] | None = Field(
        None, description="csv: cells read as missing (null: '', ?, NA, N/A, NaN, null, None, -)")


class _NoOptions(TaskConfig):
    """A section with no keys (a task without statement options)."""


# ---- the task section (every task) -------------------------------------------------

class SplitConfig(Strict):
    test_size: float = Field(0.2, gt=0, lt=1)  # the share of rows (of groups) held out for test
    group_by_patient: bool = True  # every patient on one side of the split


class FormatConfig(Strict):
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # Cohere eval file: this share of TRAIN


class PromptConfig(Strict):
    """The instruction and the question; ``{target}`` in either is replaced by ``target``
    (what the answer is, e.g. "vascular age" or "age": the name of the column you map)."""

    system: str = ""             # the instruction (system turn; null: none at all)
    question: str = ""           # asked after the statement (user turn)
    target: str | None = None    # what the answer is, for {target}, e.g. vascular age

    @model_validator(mode="after")
    def _target_given(self) -> PromptConfig:
        if self.target is None and "{target}" in self.system + self.question:
            raise ValueError("prompt uses {target}: set prompt.target (what the answer is, "
                             "e.g. vascular age)")
        return self


#: the most answers a regression's numeric decoding enumerates (its tree pass feeds them all)
MAX_NUMERIC_ANSWERS = 2001


class AnswerConfig(Strict):
    """What the model may answer. Regression: a number in ``[min, max]`` with ``decimals``
    decimals (numeric decoding enumerates every such number; every method is bounded to the
    range). Multiclass: ``labels``, the classes and, as a mapping, the words an LLM answers
    for each (``{AF: atrial fibrillation}``); null takes the data's labels as they are."""

    min: int | float = 18   # regression: the smallest possible answer (every method is bounded to it)
    max: int | float = 110  # regression: the largest possible answer
    decimals: int = Field(0, ge=0, le=3)  # regression: decimals of an LLM's answer (0: whole numbers)
    # multiclass: [label, ...] or {label: answer text}; null: every label of the data, as written
    labels: list[str] | dict[str, str] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _label_text(cls, v: Any) -> Any:  # YAML reads 1, 1.0 and true as numbers / booleans
        def text(x: Any) -> str:
            if isinstance(x, bool):
                return str(x).lower()
            if isinstance(x, float) and x.is_integer():
                return str(int(x))
            return str(x).strip()
        if isinstance(v, Mapping):
            return {text(k): text(t) for k, t in v.items()}
        if isinstance(v, list):
            return [text(x) for x in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AnswerConfig:
        if self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be above min ({self.min})")
        for end in (self.min, self.max):
            if abs(end * 10 ** self.decimals - round(end * 10 ** self.decimals)) > 1e-9:
                raise ValueError(f"{end} has more than decimals={self.decimals} decimal(s): "
                                 "the range's ends are answers too")
        n = round((self.max - self.min) * 10 ** self.decimals) + 1
        if n > MAX_NUMERIC_ANSWERS:
            raise ValueError(f"[{self.min}, {self.max}] with {self.decimals} decimal(s) is {n} "
                             f"possible answers; numeric decoding enumerates at most "
                             f"{MAX_NUMERIC_ANSWERS}: narrow the range or use fewer decimals")
        if self.labels is not None:
            keys = list(self.labels)
            texts = list(self.labels.values()) if isinstance(self.labels, dict) else keys
            if len(keys) < 3:
                raise ValueError(f"labels: a multiclass answer has three or more labels, got "
                                 f"{keys} (two labels: type classification with positive_label)")
            for what, items in (("label", keys), ("answer text", texts)):
                low = [t.lower() for t in items]
                dup = sorted({t for t, lo in zip(items, low, strict=True) if low.count(lo) > 1})
                if dup or "" in items:
                    raise ValueError(f"labels: every {what} must be non-empty and distinct "
                                     f"(case aside); repeated or empty: {dup or ['']}")
        return self


class ImagesConfig(Strict):
    width_px: PositiveInt = 768  # ECG paper PNG width (the vlm method's input)
    height_px: PositiveInt = 512  # and height


class TaskSection(Strict):
    """``tasks.<name>``: the keys every task has (download/statements: the task's own configs)."""

    type: Literal["classification", "multiclass", "regression"]  # Yes/No, one of 3+ labels, or a number
    kind: str | None = Field(None, description="the task's code: null for a built-in task "
                                               "(its name), `table` for any clinical table")
    download: dict[str, Any] = {}    # validated by the task's own download_config
    statements: dict[str, Any] = {}  # validated by the task's own statements_config
    split: SplitConfig = SplitConfig()      # the train/test split (its section)
    format: FormatConfig = FormatConfig()   # the Cohere chat JSONL files (its section)
    prompt: PromptConfig = PromptConfig()   # what every LLM is told and asked (its section)
    answer: AnswerConfig = AnswerConfig()   # regression / multiclass: the possible answers (its section)
    images: ImagesConfig = ImagesConfig()   # vascular_age: the ECG PNGs (its section)


class Task:
    """One task's data steps. Subclasses set ``name`` and the two config models."""

    name: str = ""
    #: the ``download`` section: its keys, types and defaults (one home)
    download_config: ClassVar[type[TaskConfig]] = _NoOptions
    #: the ``statements`` section: its keys, types and defaults (one home)
    statements_config: ClassVar[type[TaskConfig]] = _NoOptions
    #: the ``type`` values this task's data can answer (a built-in task has one)
    task_types: ClassVar[tuple[str, ...]] = ("classification", "multiclass", "regression")

    def __init__(self, name: str | None = None) -> None:
        if name is not None:  # a generic kind serves many tasks: each instance its own name
            self.name = name

    def download_settings(self, cfg: Mapping[str, Any]) -> Any:
        """``cfg["download"]`` as a :attr:`download_config` instance."""
        return parse_section(self.download_config, cfg.get("download"),
                             f"tasks.{self.name}.download")

    def statement_settings(self, cfg: Mapping[str, Any]) -> Any:
        """``cfg["statements"]`` as a :attr:`statements_config` instance."""
        return parse_section(self.statements_config, cfg.get("statements"),
                             f"tasks.{self.name}.statements")

    def check_section(self, cfg: Mapping[str, Any]) -> None:
        """Checks of the whole ``tasks.<name>`` section that its typed parts cannot make alone
        (params validation; a ``ValueError`` naming the key). Nothing by default."""

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

        All or nothing: validated like the task's csv source (unknown fields are errors), and
        the first refused record raises a :class:`~clinlm.io.DataError` naming ``source``, the
        1-based record and the field. :meth:`screen_records` answers the others instead.
        """
        screened = self.screen_records(cfg, records, source)
        error = screened.error(source)
        if error is not None:
            raise error
        return screened.table

    # ---- the prediction paths: every input row accepted or refused in place ---------------
    # A task gives four hooks; the base class does the rest (one home for "one row in, one
    # row out"): the generic checks of a request's values, the refusals, the row numbers.

    def records_frame(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                      source: str) -> tuple[pd.DataFrame, dict[int, tuple[str | None, str]]]:
        """Records (objects of known fields; ``{}`` for a record already refused) -> one row of
        text cells per record, in the layout :meth:`frame_table` reads, and the records the task
        refuses before validation (1-based row -> (field, rule), e.g. a required field missing).
        """
        raise NotImplementedError

    def csv_frame(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """A user's CSV in the task's raw schema -> its cells, one row per data line (a problem
        with the whole file is a :class:`~clinlm.io.DataError` without a row)."""
        raise NotImplementedError

    def frame_table(self, cfg: Mapping[str, Any], raw: pd.DataFrame,
                    source: str | Path, *, from_records: bool = False) -> pd.DataFrame:
        """Raw rows (of :meth:`records_frame` / :meth:`csv_frame`) -> statements table, one row
        per raw row in order. Bad cells raise a :class:`~clinlm.io.DataError` whose ``cells``
        list them (row numbers within ``raw``); a row the training data's documented filters
        would drop (noshow: a negative age) is such a cell here, never dropped silently.
        ``from_records``: the rows are fields a person gave (``ask``, the page), where a field
        left empty is said as "not recorded"; a CSV's statements equal the pipeline's own.
        """
        raise NotImplementedError

    def frame_ids(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> list[str | None]:
        """The caller's id of each raw row (what a refusal is keyed by; None when none)."""
        raise NotImplementedError

    def screen_records(self, cfg: Mapping[str, Any], records: Sequence[Any],
                       source: str = "request") -> Screened:
        """Records given as fields (``ask``, ``serve``) -> :class:`Screened`: each accepted or
        refused with the field and the rule. Only "no record at all" is an error."""
        from clinlm.io import DataError

        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise DataError(source, "give a list of records (objects of fields)")
        if not records:
            raise DataError(source, "no record given")
        names = [f["name"] for f in self.input_fields(cfg)]
        refused = record_problems(records, names)
        clean = [{} if i in refused else dict(rec) for i, rec in enumerate(records, 1)]
        raw, more = self.records_frame(cfg, clean, source)
        for row, why in more.items():
            refused.setdefault(row, why)
        return screen_frame(raw, lambda part: self.frame_table(cfg, part, source, from_records=True),
                            refused,
                            self.frame_ids(cfg, raw))

    def screen_csv(self, cfg: Mapping[str, Any], path: Path) -> Screened:
        """A user's CSV (``clinlm predict``) -> :class:`Screened`, one entry per data line.

        A CSV with ``id`` and ``statement`` columns is a ready statements table (a missing or
        repeated id, or an empty statement, is refused); any other is in the task's raw schema.
        """
        from clinlm.io import DataError

        path = Path(path)
        if not path.is_file():
            raise DataError(path, "file not found")
        if {"id", "statement"} <= _header(path):
            return _screen_statements(cfg, path)
        raw = self.csv_frame(cfg, path)
        return screen_frame(raw, lambda part: self.frame_table(cfg, part, path), {},
                            self.frame_ids(cfg, raw))


#: the longest text a request's field may hold (a whole statement is a few hundred characters)
MAX_TEXT = 1000


def safe_text(value: Any, limit: int = 200) -> str:
    """``value`` as text an answer may echo (an id, a field name): lone surrogates escaped so
    it always encodes to UTF-8, cut at ``limit`` characters."""
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    return {list: "a list", tuple: "a list", dict: "an object"}.get(
        type(value), "an object" if isinstance(value, Mapping) else type(value).__name__)


def value_problem(value: Any) -> str | None:
    """What is wrong with one field's value before the task reads it (None: nothing): it must
    be empty, text, a finite number of sane size or true/false; text must be valid Unicode
    (a JSON ``"\\ud800"`` is not) and at most :data:`MAX_TEXT` characters."""
    import numbers

    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return None if int(value).bit_length() <= 64 else "a number too large to be a value"
    if isinstance(value, numbers.Real):
        return None if math.isfinite(float(value)) else "not a finite number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode text (a lone surrogate)"
        if len(value) > MAX_TEXT:
            return f"longer than {MAX_TEXT} characters"
        return None
    return f"must be text, a number or true/false, got {_kind(value)}"


def record_problems(records: Sequence[Any], fields: Sequence[str]
                    ) -> dict[int, tuple[str | None, str]]:
    """The checks every task's records share, per record (1-based row -> (field, rule)): an
    object whose keys are known fields and whose values pass :func:`value_problem`."""
    out: dict[int, tuple[str | None, str]] = {}
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, Mapping):
            out[i] = (None, f"a record must be an object of fields, got {_kind(rec)}")
            continue
        for key, value in rec.items():
            name = safe_text(key)
            if name != key:
                out[i] = (name, "the field name is not valid text")
            elif key not in fields:
                out[i] = (name, f"unknown field; the fields are {list(fields)}")
            elif (rule := value_problem(value)) is not None:
                out[i] = (name, rule)
            if i in out:
                break
    return out


@dataclass
class Screened:
    """The rows given to a prediction path, each accepted or refused, in input order.

    ``table``: the statements table of the accepted rows, in input order; ``rows``: the
    1-based input row of each of its rows; ``refused``: 1-based input row -> (field or None,
    the rule it breaks); ``ids``: the caller's id of every input row (None: none given).
    """

    n: int
    ids: list[str | None]
    table: pd.DataFrame
    rows: np.ndarray
    refused: dict[int, tuple[str | None, str]] = field(default_factory=dict)

    def error(self, source: str | Path) -> Exception | None:
        """The first refusal as a :class:`~clinlm.io.DataError` (for all-or-nothing callers)."""
        from clinlm.io import DataError

        if not self.refused:
            return None
        row = min(self.refused)
        column, rule = self.refused[row]
        return DataError(source, rule, row=row, column=column)


def screen_frame(raw: pd.DataFrame, build: Callable[[pd.DataFrame], pd.DataFrame],
                 refused: dict[int, tuple[str | None, str]],
                 ids: list[str | None]) -> Screened:
    """Build the table of ``raw``'s rows not yet refused; a :class:`~clinlm.io.DataError`
    listing bad cells refuses those rows and the rest are built again (each round refuses at
    least one row, and a check reports every row it fails at once, so the rounds are few).
    A DataError without cells (a problem with the whole input) propagates."""
    from clinlm.io import DataError

    refused = dict(refused)
    keep = np.array([i for i in range(len(raw)) if i + 1 not in refused], dtype=np.int64)
    table = pd.DataFrame({"id": pd.Series(dtype=str), "statement": pd.Series(dtype=str),
                          "label": pd.Series(dtype=object)})
    while keep.size:
        try:
            built = build(raw.iloc[keep].reset_index(drop=True))
        except DataError as e:
            bad = sorted({r for r, _, _ in e.cells if 1 <= r <= keep.size})
            if not bad:
                raise
            for r, column, rule in e.cells:
                if 1 <= r <= keep.size:
                    refused.setdefault(int(keep[r - 1]) + 1, (column, rule))
            keep = np.delete(keep, [r - 1 for r in bad])
            continue
        if len(built) != keep.size:
            raise RuntimeError(f"the task built {len(built)} rows from {keep.size} accepted "
                               "input rows")
        table = built.reset_index(drop=True)
        break
    safe_ids = [None if i is None else safe_text(i) for i in ids]
    return Screened(len(raw), safe_ids, table, keep + 1, refused)


def _header(path: Path) -> set[str]:
    """The column names of a CSV's first line (empty when it cannot be read as CSV: the
    task's own reader then says why)."""
    try:
        return {str(c).strip() for c in pd.read_csv(path, nrows=0).columns}
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return set()


def _screen_statements(cfg: Mapping[str, Any], path: Path) -> Screened:
    """A ready statements table (``id``, ``statement``, optional ``label`` and ``f_*``)."""
    from clinlm.io import DataError

    try:
        df = pd.read_csv(path, dtype={"id": str, "statement": str})
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(path, f"not a readable CSV: {e}") from None
    if "label" not in df.columns:
        df["label"] = None
    ids = df["id"].fillna("").astype(str).str.strip()
    text = df["statement"].fillna("").astype(str).str.strip()
    refused: dict[int, tuple[str | None, str]] = {}
    first: dict[str, int] = {}
    for i, (id_, stmt) in enumerate(zip(ids, text, strict=True), 1):
        if not id_:
            refused[i] = ("id", "missing id")
        elif id_ in first:
            refused[i] = ("id", f"duplicate id (as row {first[id_]}): got {id_!r}")
        elif not stmt:
            refused[i] = ("statement", "empty statement")
        first.setdefault(id_, i)
    df["id"] = ids
    return screen_frame(df, lambda part: part, refused, [i or None for i in ids])


def task_kind(name: str, cfg: Mapping[str, Any] | None) -> str:
    """The registry entry of ``tasks.<name>``: its ``kind`` (a generic one such as ``table``),
    else the name itself (a built-in task). Errors name the key."""
    kind = (cfg or {}).get("kind") if isinstance(cfg, Mapping) else None
    if kind is None:
        if name in GENERIC_KINDS:
            raise ValueError(f"tasks.{name}: {name!r} is a kind, not a task name: name the "
                             f"task (e.g. tasks.my_table) and set kind: {name}")
        if name not in TASKS:
            raise ValueError(f"tasks.{name}: unknown task; a built-in task is one of "
                             f"{sorted(set(TASKS) - set(GENERIC_KINDS))}, any other table "
                             f"declares kind: {' | '.join(GENERIC_KINDS)}")
        return name
    if kind not in GENERIC_KINDS and kind != name:
        raise ValueError(f"tasks.{name}.kind: {kind!r} is not a kind any task may declare; "
                         f"use one of {list(GENERIC_KINDS)} (a built-in task is named by its "
                         "section and needs no kind)")
    return kind


def get_task(name: str, cfg: Mapping[str, Any] | None = None) -> Task:
    """The task of ``tasks.<name>`` (``cfg``: that section, which says its ``kind``)."""
    return import_object(TASKS, task_kind(name, cfg), "task")(name)


def download(task: str, cfg: dict[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch or generate the raw data of ``task`` into ``out_dir``."""
    return get_task(task, cfg).download(cfg, seed, Path(out_dir))


def build_table(task: str, cfg: dict[str, Any], raw_dir: Path) -> pd.DataFrame:
    """The statements table of ``task`` from its raw files."""
    return get_task(task, cfg).build_table(cfg, Path(raw_dir))


def table_from_csv(task: str, cfg: dict[str, Any], path: Path) -> pd.DataFrame:
    """A user's CSV -> statements table (see :meth:`Task.table_from_csv`)."""
    return get_task(task, cfg).table_from_csv(cfg, Path(path))


__all__ = ["GENERIC_KINDS", "TASKS", "Screened", "Task", "TaskConfig", "build_table", "download", "get_task",
           "parse_section", "record_problems", "safe_text", "screen_frame", "table_from_csv",
           "task_kind"]
