"""Ask a trained run about ONE appointment / subject given as fields; shared by ``serve``.

``python -m clinlm ask --run noshow-smollm2-sft --field age=34 --field sex=F ...`` (or
``--json '{...}'`` / ``--json-file f``) prints the answer with its probability (classification:
``p_yes`` and the Yes/No decision at ``predict.threshold``) or its 90 % interval (regression),
and the statement the model saw. ``--format json`` prints the same as one JSON object.
``--list-fields`` prints the fields the run's task takes (without loading the model). Bad
input: a message naming the field and the rule, exit code 2, no traceback; library notices
(not errors) are silenced (:func:`clinlm.predict.quiet_libraries`).

Fields -> statements table is the task's job (``Task.screen_records``: every record accepted
or refused in place, naming the field and the rule); the model -- a stack's members included
-- is loaded once per :class:`Predictor` (a server keeps it), and its answers come in the
schema of :func:`clinlm.predict.predict_table` (``tests/test_ask.py`` checks both give the
same numbers).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: methods ask/serve answer with; the others are refused with the reason
SUPPORTED = ("sft", "head", "gbdt", "stack")
UNSUPPORTED = {
    "vlm": "the vlm method reads an ECG image per subject, which fields cannot carry; "
           "ask/serve answer sft, head, gbdt and stack runs",
    "cohere": "cohere runs call a paid remote API with a resumable per-id store; ask/serve "
              "answer sft, head, gbdt and stack runs",
}


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
    method = runs[run_name]["method"]
    if method in UNSUPPORTED:
        raise AskError(f"run {run_name!r}: {UNSUPPORTED[method]}", field="run", status=400)
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
        self._score = _load_scorer(self.run, params)

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


def _load_scorer(run: Any, params: dict[str, Any] | None = None
                 ) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Load the run's model once; return ``table -> method predict rows``.

    The methods' own ``predict(run, df)`` loads the model on every call, which a server
    cannot afford; so every method is loaded here once with its own loader and scored with
    the calls its ``predict`` makes: sft / head / gbdt through
    :func:`clinlm.methods.stack.load_member`, a stack through ``StackMethod.load`` (its LLM
    member and its gbdt, each once).
    """
    from clinlm.methods.stack import StackMethod, load_member

    if run.cfg["method"] == "stack":
        method = StackMethod()
        loaded = method.load(run, params)
        return lambda df: method.predict_loaded(run, df, loaded)
    return load_member(run)


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
    * regression: ``statement``, ``prediction`` (= ``y_pred``), ``y_lo``, ``y_hi`` (90 %
      interval; None when the method has none, e.g. the head);
    * ``clipped`` when the method says whether it clipped the answer to the possible range.
    """
    from clinlm.methods import CLASSIFICATION
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
        else:
            a.update(prediction=_num(r["y_pred"]), y_pred=_num(r["y_pred"]),
                     y_lo=_num(r["y_lo"]), y_hi=_num(r["y_hi"]))
        if "clipped" in r:
            a["clipped"] = None if pd.isna(r["clipped"]) else bool(r["clipped"])
        out.append(a)
    return out


# ---- the command line ------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_BOOL = {"true": True, "yes": True, "false": False, "no": False}


def coerce(value: str, field: Mapping[str, Any] | None) -> Any:
    """A ``--field k=v`` string -> the JSON type its field kind takes (numbers, booleans).

    A string that does not parse is passed on unchanged: the task's validation then names
    the field and says what it expected.
    """
    kind = (field or {}).get("kind")
    v = value.strip()
    if kind == "number":
        try:
            return int(v) if _INT.fullmatch(v) else float(v)
        except ValueError:
            return value
    if kind == "bool" and not (field or {}).get("choices"):  # with choices: their strings
        return _BOOL.get(v.lower(), int(v) if v in ("0", "1") else value)
    return value


def record_from_args(args: argparse.Namespace, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The one record of ``--json`` / ``--json-file`` plus ``--field k=v`` (which win)."""
    record: dict[str, Any] = {}
    if args.json is not None or args.json_file is not None:
        where = "--json" if args.json is not None else str(args.json_file)
        try:
            text = args.json if args.json is not None else Path(args.json_file).read_text()
            record = json.loads(text)
        except OSError as e:
            raise AskError(f"{where}: cannot read: {e.strerror}", field="--json-file") from None
        except json.JSONDecodeError as e:
            raise AskError(f"{where}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                           field="--json") from None
        if not isinstance(record, dict):
            raise AskError(f"{where}: give ONE object of fields ({{\"name\": value, ...}}), "
                           f"not {type(record).__name__}", field="--json")
    by_name = {f["name"]: f for f in fields}
    seen: set[str] = set()
    for item in args.field or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AskError(f"--field {item!r}: write it as name=value", field=key or item)
        if key in seen:
            raise AskError(f"--field {key!r} given twice", field=key)
        seen.add(key)
        record[key] = coerce(value, by_name.get(key))
    return record


def format_text(p: Predictor, a: Mapping[str, Any]) -> str:
    """The human answer: question, answer with its uncertainty, and the statement."""
    d = p.describe()
    lines = [f"run:       {p.name} (task {d['task']}, method {p.method})",
             f"question:  {p.question}"]
    if p.classification:
        if a["p_yes"] is None:
            lines.append("answer:    none (the model gave no probability for this row)")
        else:
            lines.append(f"answer:    {a['prediction']}   p_yes = {a['p_yes']:.3f} "
                         f"(Yes when p_yes >= {a['threshold']:g})")
    else:
        interval = ("no interval (this method gives none)" if a["y_lo"] is None else
                    f"90 % interval {a['y_lo']:.1f} to {a['y_hi']:.1f}")
        lines.append(f"answer:    {a['y_pred']:.1f}   {interval}")
    lines.append(f"statement: {a['statement']}")
    lines += [f"base rate: {d['base_rate']['text']}", f"quality:   {d['metric']['text']}",
              f"decision:  {d['decision']['text']}", f"notice:    {d['notice']}"]
    return "\n".join(lines)


def _fields_text(fields: list[dict[str, Any]]) -> str:
    rows = []
    for f in fields:
        kind = f["kind"] + (f" [{f['unit']}]" if f.get("unit") else "")
        if f.get("choices"):
            kind += " one of " + "/".join(map(str, f["choices"]))
        req = "required" if f.get("required") else "optional"
        label = f.get("label") or f["name"]
        rows.append(f"  {f['name']:<22} {label:<30} {kind:<28} {req:<9} "
                    f"e.g. {f.get('example')!r}  {f.get('help', '')}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clinlm ask",
                                 description="Answer ONE appointment / subject with a trained run.")
    ap.add_argument("--run", required=True, help="runs.<method>.<name> in params.yaml, "
                                                 "e.g. noshow-smollm2-sft")
    ap.add_argument("--field", action="append", metavar="NAME=VALUE",
                    help="one input field (repeat); --list-fields shows them")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--json", help="the fields as one JSON object")
    src.add_argument("--json-file", type=Path, help="a file holding one JSON object of fields")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--list-fields", action="store_true", help="print the run's input fields")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m clinlm ask``); returns the exit code."""
    from clinlm.predict import quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries()  # no loading bars or library notices around one answer
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.list_fields:  # from params alone: no model loaded
            fields = list_fields(args.run, args.params)
            print(json.dumps(fields, indent=2) if args.format == "json" else _fields_text(fields))
            return 0
        p = Predictor(args.run, params_path=args.params)
        a = p.predict([record_from_args(args, p.fields)], source="input")[0]
        if a["status"] != "ok":
            raise AskError(f"input, row 1: {a['error']}", row=1, field=a["field"])
    except AskError as e:
        if args.format == "json":
            print(json.dumps(e.to_dict()))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"run": p.name, "task": p.run.task, "method": p.method, **a}))
    else:
        print(format_text(p, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
