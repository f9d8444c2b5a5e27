"""Predictions in the one CSV schema every method shares (and the evaluator reads).

Classification: ``id, y_true, p_yes, y_pred`` (+ ``raw``, ``ok``, ``clipped`` when the method
gives them). Multiclass: ``id, y_true, y_pred, p_<label>...`` (``y_pred`` the most probable
class; one probability per class, in the model's class order). Regression: ``id, y_true,
y_pred, y_lo, y_hi`` (+ ``raw``, ``ok``, ``clipped``).

The prediction paths a user calls (``python -m clinlm predict``, ``ask``, ``serve``) answer
EVERY input row, in input order (:func:`answer_table`): the schema above plus ``row`` (1-based
input row), ``status`` (``ok`` / ``refused``), ``field`` and ``error`` (the column and the rule
a refused row breaks); ``id`` is the caller's. Nothing is dropped or renumbered: a row the
training data's documented filters would leave out (noshow: a negative age) is refused in
place. ``python -m clinlm predict --run noshow-smollm2-sft --input new.csv --output out.csv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm.io import write_csv
from clinlm.methods import CLASSIFICATION, MULTICLASS, Run, get_method
from clinlm.methods.interface import labels_of

log = logging.getLogger(__name__)

#: a method's extra columns passed through to the predictions schema when it gives them
EXTRA_COLUMNS = ("raw", "ok", "clipped")


def predict_table(run: Run, df: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Run the method's predict on ``df`` and shape the result into the shared schema.

    Under a multi-process launch (``clinlm.launch``) each process predicts its share of the
    rows and every process gets all of them back in ``df``'s order.
    """
    from clinlm.launch import shard_and_gather
    method = get_method(run.cfg["method"])
    out = shard_and_gather(df, lambda part: method.predict(run, part))
    return shape_predictions(run, df, out, threshold)


def shape_predictions(run: Run, df: pd.DataFrame, out: pd.DataFrame,
                      threshold: float = 0.5) -> pd.DataFrame:
    """A method's predict rows for ``df`` -> the one predictions schema (module docstring)."""
    if list(out["id"].astype(str)) != list(df["id"].astype(str)):
        raise RuntimeError(f"{run.model}: predict returned rows out of order or missing")
    res = pd.DataFrame({"id": df["id"].astype(str).to_numpy(), "y_true": df["label"].to_numpy()})
    if run.task_type == CLASSIFICATION:
        p = out["p_yes"].to_numpy(float)
        res["p_yes"] = p
        res["y_pred"] = np.where(np.isnan(p), None, np.where(p >= threshold, "Yes", "No"))
    elif run.task_type == MULTICLASS:
        labels = labels_of(out.columns)
        if len(labels) < 3:
            raise RuntimeError(f"{run.model}: predict gave {len(labels)} class probabilities")
        probs = out[[f"p_{c}" for c in labels]].to_numpy(float)
        ok = ~np.isnan(probs).any(axis=1)
        best = np.asarray(labels, dtype=object)[np.nan_to_num(probs, nan=-1.0).argmax(axis=1)]
        res["y_pred"] = np.where(ok, best, None)
        for c, col in zip(labels, probs.T, strict=True):
            res[f"p_{c}"] = col
    else:
        for c in ("y_pred", "y_lo", "y_hi"):
            res[c] = out[c].to_numpy(float) if c in out else np.nan
    for c in EXTRA_COLUMNS:
        if c in out:
            res[c] = out[c].to_numpy()
    return res


def refusal_text(field: str | None, rule: str) -> str:
    """A refused row's ``error``: the column, then the rule it breaks."""
    return f"{field}: {rule}" if field else rule


def answer_table(run: Run, screened: Any, res: pd.DataFrame) -> pd.DataFrame:
    """Every input row once, in input order: ``row``, ``id``, the predictions schema of the
    accepted rows (``res``, from :func:`shape_predictions`; empty cells for a refused row),
    ``status``, ``field``, ``error``. ``screened``: a :class:`clinlm.tasks.Screened`."""
    n, pos = screened.n, np.asarray(screened.rows, dtype=np.int64) - 1
    if len(res) != len(pos):
        raise RuntimeError(f"{run.model}: {len(res)} predictions for {len(pos)} accepted rows")
    if not len(res):  # nothing accepted: the schema's columns, all empty
        cols = (["id", "y_true", "p_yes", "y_pred"] if run.task_type == CLASSIFICATION
                else ["id", "y_true", "y_pred"] if run.task_type == MULTICLASS
                else ["id", "y_true", "y_pred", "y_lo", "y_hi"])
        res = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    body = res.set_axis(pos).reindex(np.arange(n))
    ids = np.array(screened.ids, dtype=object)
    ids[pos] = res["id"].to_numpy(object)  # an accepted row: the id the model saw
    refused = screened.refused
    out = pd.DataFrame({"row": np.arange(1, n + 1), "id": ids})
    for c in res.columns.drop("id"):
        out[c] = body[c].to_numpy()
    out["status"] = np.where(np.isin(out["row"], list(refused)), "refused", "ok")
    out["field"] = [refused[r][0] if r in refused else None for r in out["row"]]
    out["error"] = [refusal_text(*refused[r]) if r in refused else None for r in out["row"]]
    return out


def predict_screened(run: Run, screened: Any, threshold: float = 0.5,
                     score: Callable[[pd.DataFrame], pd.DataFrame] | None = None
                     ) -> pd.DataFrame:
    """Answer every screened row (:func:`answer_table`): the accepted ones scored by
    ``score`` (table -> the method's predict rows; default: :func:`predict_table`), the
    refused ones in place. No accepted row: nothing is scored (no model call on 0 rows)."""
    table = screened.table
    if not len(table):
        res = table.iloc[:0]
    elif score is None:
        res = predict_table(run, table, threshold)
    else:
        res = shape_predictions(run, table, score(table), threshold)
    return answer_table(run, screened, res)


def quiet_libraries() -> None:
    """Keep a user command's output to its answer: library notices that are not errors
    (bitsandbytes' CPU-kernel notes, FutureWarning/DeprecationWarning, transformers' "newly
    initialized" report for the head that the trained one replaces next) are silenced;
    errors and this project's own warnings still show."""
    import os
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!clinlm)")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate", "torch", "trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")


def build_parser() -> argparse.ArgumentParser:
    """``python -m clinlm predict``'s options."""
    ap = argparse.ArgumentParser(
        prog="python -m clinlm predict",
        description="Predict every row of a CSV with a trained run. The output has one row "
                    "per input row, in input order: row, id, the prediction columns, status "
                    "(ok/refused) and, for a refused row, field and error (the column and the "
                    "rule it breaks). Exit 0 when at least one row is answered, 2 on a user "
                    "error or when every row is refused (the file is still written then).")
    ap.add_argument("--run", required=True,
                    help="a run name from runs.<method> in params.yaml, e.g. noshow-gbdt")
    ap.add_argument("--input", required=True, type=Path,
                    help="the rows to predict: a CSV in the task's raw columns (noshow: the "
                         "Kaggle columns, No-show optional; vascular_age: the columns of "
                         "`python -m clinlm ask --list-fields`), or a statements table "
                         "with id and statement columns")
    ap.add_argument("--output", required=True, type=Path,
                    help="where to write the answers CSV (atomically: never half-written)")
    ap.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI: predict a new CSV with a trained run (see :func:`build_parser`); the exit code."""
    from ruamel.yaml import YAMLError

    from clinlm.io import DataError
    from clinlm.params import ParamsError, load_params
    from clinlm.paths import setup_logging
    from clinlm.runs import make_run
    from clinlm.tasks import get_task

    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_libraries()
    try:
        params = load_params(args.params)
        run = make_run(args.run, params)
        if not run.model_dir.is_dir():
            raise ParamsError(f"run {args.run!r} is not trained: {run.model_dir} is missing "
                              f"(run `dvc repro train_{run.cfg['method']}@{args.run}` first)")
        try:  # e.g. a cohere run without its API key: said before any work
            get_method(run.cfg["method"]).check_ready(run)
        except (RuntimeError, ValueError) as e:
            raise ParamsError(f"run {args.run!r}: {e}") from None
        screened = get_task(run.task, run.task_cfg).screen_csv(run.task_cfg, args.input)
        answers = predict_screened(run, screened, params.get("predict", {}).get("threshold", 0.5))
        write_csv(args.output, answers)
    except (DataError, ParamsError, YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # params, input or output file
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    refused = answers[answers["status"] == "refused"]
    print(f"{args.output}: {len(answers)} rows, {len(answers) - len(refused)} answered, "
          f"{len(refused)} refused", file=sys.stderr)
    for r in refused.head(5).itertuples():
        print(f"  row {r.row} (id {r.id}): {r.error}", file=sys.stderr)
    if len(refused) > 5:
        print(f"  ... {len(refused) - 5} more (status/error columns)", file=sys.stderr)
    return 2 if len(refused) == len(answers) else 0


if __name__ == "__main__":
    raise SystemExit(main())
