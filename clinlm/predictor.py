"""One trained run loaded once, answering records (one dict of fields per case): what ``ask``
and ``serve`` hold.

Fields -> statements table is the task's job (``Task.screen_records``: every record accepted
or refused in place, naming the field and the rule); the model -- a stack's members included
-- is loaded once per process (:func:`clinlm.methods.load_once`), and its answers come in the
schema of :func:`clinlm.predict.predict_table` (``tests/test_ask.py`` checks both give the
same numbers).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def refusal(method: str) -> str | None:
    """Why ask/serve cannot answer a ``method`` run (its class's ``ask_refusal``, with the
    methods they do answer); None when they can."""
    from clinlm.methods import method_class, method_names
    why = method_class(method).ask_refusal
    if why is None:
        return None
    ok = [m for m in method_names() if method_class(m).ask_refusal is None]
    return f"{why}; ask/serve answer {', '.join(ok)} runs"


class AskError(ValueError):
    """A problem the caller can fix: bad input (``row``/``field`` say where) or a bad run.

    ``status`` is the HTTP status the server answers with.
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None,
                 status: int = 422) -> None:
        super().__init__(message)
        self.row, self.field, self.status = row, field, status

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": message, "row": n, "field": name}`` (text that
        always encodes: a caller's lone surrogate comes back escaped)."""
        from clinlm.tasks import safe_text
        return {"error": safe_text(str(self), 2000), "row": self.row,
                "field": None if self.field is None else safe_text(self.field)}


def _run_entry(run_name: str, params: dict[str, Any] | None,
               params_path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, the run's ``{task, model, method}``) for a run ask/serve can answer; an unknown
    or unsupported run, or a bad params file, is an :class:`AskError`. Light: the libraries'
    own checks of the model sections (which import them) are left to ``make_run``."""
    from clinlm.params import ParamsError, all_runs, load_params

    try:
        params = params or load_params(params_path)
        runs = all_runs(params)
    except ParamsError as e:
        raise AskError(f"{params_path}: {e}", status=400) from None
    if run_name not in runs:
        raise AskError(f"no run {run_name!r} in {params_path}; known: "
                       f"{', '.join(runs) or 'none'}", field="run", status=404)
    why = refusal(runs[run_name]["method"])
    if why is not None:
        raise AskError(f"run {run_name!r}: {why}", field="run", status=400)
    return params, runs[run_name]


def list_fields(run_name: str, params_path: str | Path = "params.yaml") -> list[dict[str, Any]]:
    """The input fields of a run's task, from params alone: no model is loaded and no model
    library imported (``ask --list-fields``)."""
    from clinlm.tasks import get_task

    params, entry = _run_entry(run_name, None, params_path)
    task = params["tasks"][entry["task"]]
    return get_task(entry["task"], task).input_fields(task)


class Predictor:
    """One trained run, loaded once; answers records (one dict of fields per row).

    Thread-safe: one lock per model, so a server's worker threads never run the same torch
    model concurrently.
    """

    def __init__(self, run_name: str, params: dict[str, Any] | None = None,
                 params_path: str | Path = "params.yaml") -> None:
        from clinlm.params import ParamsError
        from clinlm.runs import make_run
        from clinlm.tasks import get_task

        params, entry = _run_entry(run_name, params, params_path)
        method = entry["method"]
        try:
            self.run = make_run(run_name, params)
        except ParamsError as e:
            raise AskError(f"{params_path}: {e}", status=400) from None
        self.name, self.method = run_name, method
        self.threshold = float((params.get("predict") or {}).get("threshold", 0.5))
        self.task = get_task(self.run.task, self.run.task_cfg)
        self.fields: list[dict[str, Any]] = self.task.input_fields(self.run.task_cfg)
        self._lock = threading.Lock()
        if not self.run.model_dir.is_dir():
            raise FileNotFoundError(
                f"run {run_name!r} is not trained: {self.run.model_dir} is missing (run "
                f"`dvc repro train_{method}@{run_name}` or `make repro` first)")
        self._score = _load_scorer(self.run)

    def warm_up(self) -> None:
        """Answer the fields' own example once: the first torch call is several times slower
        than the next ones (a server does it before its first client)."""
        example = {f["name"]: f["example"] for f in self.fields if f.get("example") is not None}
        answer = self.predict([example], source="warm-up")[0]
        if answer["status"] != "ok":  # examples not enough for this task: no warm-up, no harm
            log.info("%s: no warm-up (%s)", self.name, answer["error"])

    def describe(self) -> dict[str, Any]:
        """What a client needs to ask this run: task, method, question and input fields, and
        what an answer is worth (:func:`clinlm.runinfo.run_info`: notice, base rate, test
        metric with its interval, the threshold's meaning; read from files once, then kept)."""
        if "_info" not in self.__dict__:
            from clinlm.runinfo import run_info
            self._info = run_info(self.run, self.threshold)
        return {"run": self.name, "task": self.run.task, "task_type": self.run.task_type,
                "method": self.method, "model": self.run.model,
                "question": self.question,
                "threshold": self.threshold if self.classification else None,
                "fields": self.fields, **self._info}

    @property
    def question(self) -> str:
        """The task's question as the LLM methods ask it (``{target}`` filled in)."""
        from clinlm.prompts import prompt_text
        return (prompt_text(self.run.task_cfg, "question") or "").strip()

    @property
    def classification(self) -> bool:
        from clinlm.methods import CLASSIFICATION
        return self.run.task_type == CLASSIFICATION

    def screen(self, records: Sequence[Any], source: str = "request") -> Any:
        """Records -> :class:`clinlm.tasks.Screened` (each accepted or refused in place); only
        a problem with the whole input (no records) is an :class:`AskError`."""
        from clinlm.io import DataError
        try:
            return self.task.screen_records(self.run.task_cfg, records, source=source)
        except DataError as e:
            raise AskError(str(e), row=e.row, field=e.column) from None

    def table(self, records: Sequence[Mapping[str, Any]], source: str = "request") -> pd.DataFrame:
        """Records -> the task's statements table, all or nothing: the first refused record
        is an :class:`AskError` naming its row and field."""
        screened = self.screen(records, source)
        error = screened.error(source)
        if error is not None:
            raise AskError(str(error), row=error.row, field=error.column)
        return screened.table

    def _locked_score(self, table: pd.DataFrame) -> pd.DataFrame:
        with self._lock:
            return self._score(table)

    def predict(self, records: Sequence[Any], source: str = "request") -> list[dict[str, Any]]:
        """One answer dict per record, in order (see :func:`answers`): a prediction, or a
        refusal naming the field and the rule; the refused ones never reach the model."""
        from clinlm.predict import predict_screened

        screened = self.screen(records, source)
        res = predict_screened(self.run, screened, self.threshold, score=self._locked_score)
        statements = [None] * screened.n
        for row, text in zip(screened.rows, screened.table["statement"], strict=True):
            statements[int(row) - 1] = str(text)
        return answers(self.run.task_type, res, statements, self.threshold)


def _load_scorer(run: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Load the run's model once per process; return ``table -> method predict rows``.

    The methods' own ``predict(run, df)`` loads the model on every call, which a server
    cannot afford; so every run is loaded once with its method's own loader
    (:meth:`clinlm.methods.interface.Method.load`, shared through
    :func:`clinlm.methods.load_once`: a stack's members too, and a member a server also
    answers alone is loaded once).
    """
    from clinlm.methods import load_once
    return load_once(run)


def _num(x: Any) -> float | None:
    x = float(x) if x is not None else math.nan
    return x if math.isfinite(x) else None


def answers(task_type: str, res: pd.DataFrame, statements: Sequence[str | None],
            threshold: float) -> list[dict[str, Any]]:
    """Plain JSON-able answers, one per input row of ``res``
    (:func:`clinlm.predict.answer_table`): ``row`` (1-based), ``id``, ``status`` and

    * refused: ``error`` (the field and the rule) and ``field``;
    * classification: ``statement``, ``prediction`` ("Yes"/"No", None when the model gave no
      probability), ``p_yes``, ``threshold``;
    * multiclass: ``statement``, ``prediction`` (the most probable label, None when the model
      gave no probabilities), ``probabilities`` ({label: p}, in the model's class order);
    * regression: ``statement``, ``prediction`` (= ``y_pred``), ``y_lo``, ``y_hi`` (90 %
      interval; None when the method has none, e.g. the head);
    * ``clipped`` when the method says whether it clipped the answer to the possible range.
    """
    from clinlm.methods import CLASSIFICATION, MULTICLASS
    out = []
    for r, stmt in zip(res.to_dict("records"), statements, strict=True):
        a: dict[str, Any] = {"row": int(r["row"]), "id": r["id"], "status": r["status"]}
        if r["status"] != "ok":
            a.update(error=r["error"], field=r["field"])
            out.append(a)
            continue
        a["statement"] = stmt
        if task_type == CLASSIFICATION:
            a.update(prediction=r["y_pred"], p_yes=_num(r["p_yes"]), threshold=threshold)
        elif task_type == MULTICLASS:
            probs = {c[2:]: _num(v) for c, v in r.items() if str(c).startswith("p_")}
            a.update(prediction=None if pd.isna(r["y_pred"]) else r["y_pred"],
                     probabilities=probs)
        else:
            a.update(prediction=_num(r["y_pred"]), y_pred=_num(r["y_pred"]),
                     y_lo=_num(r["y_lo"]), y_hi=_num(r["y_hi"]))
        if "clipped" in r:
            a["clipped"] = None if pd.isna(r["clipped"]) else bool(r["clipped"])
        out.append(a)
    return out
