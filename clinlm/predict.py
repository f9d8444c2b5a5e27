"""Predictions in the one CSV schema every method shares (and the evaluator reads).

Classification: ``id, y_true, p_yes, y_pred`` (+ ``raw``, ``ok`` when the method gives them).
Regression: ``id, y_true, y_pred, y_lo, y_hi`` (+ ``raw``, ``ok``).
Usable as ``python -m clinlm.predict --run noshow-smollm2-sft --input new.csv --output out.csv``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from clinlm.io import write_csv
from clinlm.methods import CLASSIFICATION, Run, get_method

log = logging.getLogger(__name__)


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
    else:
        for c in ("y_pred", "y_lo", "y_hi"):
            res[c] = out[c].to_numpy(float) if c in out else np.nan
    for c in ("raw", "ok"):
        if c in out:
            res[c] = out[c].to_numpy()
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI: predict a new CSV with a trained run (see module docstring)."""
    from clinlm.params import load_params
    from clinlm.paths import setup_logging
    from clinlm.runs import make_run
    from clinlm.tasks import table_from_csv

    setup_logging()
    ap = argparse.ArgumentParser(description="Predict a CSV with a trained model.")
    ap.add_argument("--run", required=True, help="runs.<name> in params.yaml, e.g. noshow-smollm2-sft")
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    run = make_run(args.run, params)
    table = table_from_csv(run.task, run.task_cfg, args.input)
    res = predict_table(run, table, params.get("predict", {}).get("threshold", 0.5))
    write_csv(args.output, res)
    log.info("wrote %d predictions to %s", len(res), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
