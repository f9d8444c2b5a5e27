"""The one interface every method (sft, head, vlm, cohere, gbdt, stack) implements.

A method turns a training table into a saved model folder, and a saved model folder plus a
table into predictions. The train/predict *stages* own file handling and the CSV schema; a
method only sees DataFrames and a folder. Heavy imports (torch, transformers, cohere) live
inside the method modules that need them, so importing the registry is cheap.

A method class also declares what it is (:class:`Method`'s class attributes: its config
class, whether it fine-tunes an LLM, exports, answers ``ask``, can be a stack member, reads
numbers from an answer grid) and how its model is loaded once (:meth:`Method.load`): params
validation, ``ask``/``serve``, ``export``, the model card, the stack and the train stage read
those declarations, so a new method is its module, one registry line
(:data:`clinlm.methods.REGISTRY`) and its dvc.yaml stage group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

CLASSIFICATION = "classification"
REGRESSION = "regression"
MULTICLASS = "multiclass"
#: task types whose answer is a label (stratified splits and subsamples, class-balanced shots)
LABELLED = (CLASSIFICATION, MULTICLASS)
#: a multiclass run's classes and their answer texts, saved in its model folder at train
CLASSES_FILE = "classes.json"


@dataclass
class Run:
    """Everything a method needs to know about one (task, model) pair.

    Attributes:
        task: task name, e.g. ``"noshow"`` or ``"vascular_age"``.
        task_type: ``"classification"`` (label ``Yes``/``No``), ``"multiclass"`` (one of
            three or more labels) or ``"regression"`` (float).
        model: model entry name in ``params.yaml`` (``models.<model>``).
        cfg: the ``models.<model>`` section, as a plain dict with every default filled in
            (``clinlm.config``) when the Run is made.
        model_dir: where train saves and predict loads (``data/models/<task>/<model>``).
        data_dir: the task's processed data folder (``data/processed/<task>``): split
            parquet files and the format stage's JSONL files live there.
        seed: the global seed.
        task_cfg: the ``tasks.<task>`` section (prompts, target range, ...), defaults filled.
        log_dir: where training curves go (dvclive), or None.
        work_dir: scratch state that survives an interrupted stage (resumable API calls);
            not a DVC output, so an interrupted predict never dirties ``model_dir``.
        members: the runs this run combines, by role (a stack's ``{"llm": (name, Run),
            "baseline": (name, Run)}``), bound from params by :meth:`Method.bind`.
    """

    task: str
    task_type: str
    model: str
    cfg: dict[str, Any]
    model_dir: Path
    data_dir: Path
    seed: int = 42
    task_cfg: dict[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    work_dir: Path | None = None
    members: dict[str, tuple[str, Run]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every default filled in from the typed configs (the method's `config`): code reads
        # cfg["predict"]["batch_size"], never cfg.get(key, default)
        from clinlm.methods import model_config_class
        from clinlm.tasks import TaskSection
        self.cfg = model_config_class(self.cfg["method"]).model_validate(self.cfg).model_dump()
        task = {k: v for k, v in self.task_cfg.items() if k != "type"}
        self.task_cfg = TaskSection.model_validate({"type": self.task_type, **task}).model_dump()
        self.model_dir = Path(self.model_dir)
        self.data_dir = Path(self.data_dir)


def bounded_answers(task_cfg: dict[str, Any], y_pred: Any, y_lo: Any = None,
                    y_hi: Any = None) -> dict[str, np.ndarray]:
    """Regression answers inside what is possible, each interval holding its estimate.

    A head or a tree ensemble extrapolates freely (a linear head said -7 years for a
    58-year-old); the task's ``answer`` range (``min``/``max``, the range sft's numeric
    decoding enumerates) bounds every value here. ``clipped`` says which rows' point estimate
    was moved onto that range. An interval is then widened, when needed, to contain its
    point estimate: quantile models fitted separately from the point model can cross it.
    NaN stays NaN (no answer, no interval). Returns ``{"y_pred", "y_lo", "y_hi", "clipped"}``.
    """
    lo_b, hi_b = float(task_cfg["answer"]["min"]), float(task_cfg["answer"]["max"])
    pred = np.asarray(y_pred, dtype=np.float64)
    nan = np.full(pred.shape, np.nan)
    lo = nan if y_lo is None else np.asarray(y_lo, dtype=np.float64)
    hi = nan if y_hi is None else np.asarray(y_hi, dtype=np.float64)
    clipped = (pred < lo_b) | (pred > hi_b)
    pred = np.clip(pred, lo_b, hi_b)
    lo, hi = np.clip(lo, lo_b, hi_b), np.clip(hi, lo_b, hi_b)
    both = ~np.isnan(lo) & ~np.isnan(hi)
    lo, hi = (np.where(both, np.fmin(np.fmin(lo, hi), pred), lo),
              np.where(both, np.fmax(np.fmax(lo, hi), pred), hi))
    return {"y_pred": pred, "y_lo": lo, "y_hi": hi, "clipped": clipped}


def subsample(df: pd.DataFrame, n: int | None, seed: int, task_type: str) -> pd.DataFrame:
    """A seeded subsample of ``n`` rows, stratified by label for a labelled task; all rows
    when n is None."""
    if n is None or n >= len(df):
        return df
    if task_type in LABELLED:
        frac = n / len(df)
        parts = [g.sample(frac=frac, random_state=seed) for _, g in df.groupby("label")]
        return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def training_classes(run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
    """A multiclass run's classes, decided at train from the whole training split (before any
    subsample, so a rare label keeps its place): ``{"labels": [...], "texts": [...]}``.

    The order is ``tasks.<task>.answer.labels`` as declared, else :func:`sort_labels`; the
    texts (what an LLM answers) are the declared ones, else the labels themselves. A training
    label the task does not declare is an error naming it. Saved as ``classes.json`` in the
    model folder (:func:`save_classes`): prediction reads the classes the model learned.
    """
    from clinlm.tasks import sort_labels

    declared = run.task_cfg["answer"].get("labels")
    seen = sort_labels(train_df["label"].dropna())
    if declared:
        labels = [str(k) for k in declared]
        unknown = [v for v in seen if v not in labels]
        if unknown:
            raise ValueError(f"{run.model}: training label(s) {unknown} are not in "
                             f"tasks.{run.task}.answer.labels {labels}")
        texts = [str(declared[k]) if isinstance(declared, dict) else k for k in declared]
    else:
        labels, texts = seen, seen
    if len(labels) < 3:
        raise ValueError(f"{run.model}: a multiclass task needs three or more labels; the "
                         f"training split has {labels}")
    return {"labels": labels, "texts": texts}


def save_classes(model_dir: Path, classes: dict[str, Any]) -> None:
    """Write ``classes.json`` (atomically) into a model folder."""
    from clinlm.io import write_json
    write_json(Path(model_dir) / CLASSES_FILE, classes)


def read_classes(model_dir: Path) -> dict[str, Any]:
    """The ``{"labels", "texts"}`` a multiclass model was trained with."""
    import json
    path = Path(model_dir) / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; this model folder was not trained for a "
                                "multiclass task (rerun its train stage)")
    return json.loads(path.read_text())


def prob_columns(labels: list[str]) -> list[str]:
    """The predictions columns of a multiclass run: ``p_<label>`` per class, in class order."""
    return [f"p_{label}" for label in labels]


def labels_of(columns: Any) -> list[str]:
    """The classes of a multiclass predictions table, from its ``p_<label>`` columns."""
    return [c[2:] for c in columns if str(c).startswith("p_")]


def class_probs(labels: list[str], p: np.ndarray) -> dict[str, np.ndarray]:
    """``{p_<label>: column}`` from an ``(n, k)`` probability matrix (rows of NaN: no answer)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(labels):
        raise ValueError(f"probabilities {p.shape} for {len(labels)} classes")
    return dict(zip(prob_columns(labels), p.T, strict=True))


class Method(ABC):
    """Train on a table, predict on a table.

    Input tables have at least the columns ``id`` (str), ``statement`` (str, the English
    sentence), ``label`` (``"Yes"``/``"No"`` for classification, the class label for
    multiclass, float for regression; may be missing at predict time) and numeric/categorical
    feature columns prefixed ``f_``.

    ``predict`` returns a DataFrame with column ``id`` (same order as the input) and:
      * classification: ``p_yes`` (float in [0, 1], probability of ``"Yes"``; NaN if the
        method could not produce one for that row);
      * multiclass: ``p_<label>`` per class in the order of the model's ``classes.json``
        (:func:`training_classes`), each row summing to 1 (all NaN: no answer for that row);
      * regression: ``y_pred`` (the point estimate), ``y_lo``, ``y_hi`` (90 % interval;
        NaN when the method has none), all inside the task's answer range, and ``clipped``
        (bool) where the estimate was moved onto that range (:func:`bounded_answers`).
    Optional extra columns: ``raw`` (raw model reply) and ``ok`` (bool, reply parsed).
    """

    #: the name ``params.yaml`` gives it (``method: sft``) and its registry key
    name: ClassVar[str] = "base"
    #: the typed config of its ``models.<m>`` sections (keys, types, defaults: one home)
    config: ClassVar[type]
    #: it fine-tunes a pretrained language model: its runs name the base folder they load
    #: (``runs.<method>.<run>.base``), and ``bnb``/``lora``/``training`` are checked against
    #: the libraries
    llm: ClassVar[bool] = False
    #: the task types it answers (others are a params error naming the run)
    task_types: ClassVar[tuple[str, ...]] = (CLASSIFICATION, MULTICLASS, REGRESSION)
    #: a trained run exports as a merged Hugging Face folder (``clinlm export``; the model
    #: card's runnable "Use" code) -- see :meth:`export_spec`
    exportable: ClassVar[bool] = False
    #: what a ``kind: table`` task lacks for it (the vlm: "reads ECG pictures"); None: tables
    #: are fine
    table_refusal: ClassVar[str | None] = None
    #: why ``ask``/``serve`` cannot answer its runs; None: they can (:meth:`load`)
    ask_refusal: ClassVar[str | None] = None
    #: the role a stack may give its runs: ``"llm"`` or ``"baseline"`` (None: no member)
    stack_role: ClassVar[str | None] = None
    #: it combines other runs (:meth:`bind` gives it their ``Run`` objects)
    holds_members: ClassVar[bool] = False
    #: its regression answers are numbers of the task's answer grid (the train stage warns
    #: about training targets outside it)
    numeric_answer: ClassVar[bool] = False
    #: the library a Hub model card names (``library_name``), and its pipeline tag (None: the
    #: task's tabular one)
    library: ClassVar[str | None] = None
    hub_pipeline: ClassVar[str | None] = None

    def bind(self, run: Run, params: dict[str, Any]) -> None:
        """Give ``run`` what it needs from params beyond its own sections (a stack: its
        member runs). Called by :func:`clinlm.runs.make_run`; nothing by default."""
        del run, params

    def load(self, run: Run) -> Callable[[pd.DataFrame], pd.DataFrame]:
        """The run's model loaded ONCE; returns ``table -> its predict rows`` (the numbers
        :meth:`predict` gives, nothing read again): what ``ask``/``serve`` and a stack's
        members keep in memory. Default: :meth:`predict` per call (a method with nothing to
        load, or one that must reload)."""
        return lambda df: self.predict(run, df)

    def answer_reading(self, run: Run) -> str:
        """How an answer is read from the model, in a sentence (the model card)."""
        return f"method {self.name}"

    def export_spec(self, run: Run) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(``load_model`` kind, ``from_pretrained`` kwargs, extra files) of the run's merged
        export (``exportable`` methods)."""
        raise ValueError(f"{run.model}: method {self.name!r} has no merged export")

    def check_ready(self, run: Run) -> None:
        """Fail fast, before any work, when the method cannot run (e.g. a missing API key)."""
        del run  # local methods have nothing to check

    @abstractmethod
    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Fit on ``train_df`` and save everything predict needs under ``run.model_dir``.

        Returns a small JSON-able dict of facts about training (rows used, seconds, ...).
        """

    @abstractmethod
    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load from ``run.model_dir`` and predict every row of ``df`` (schema above)."""
