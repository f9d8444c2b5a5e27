"""Stage predict: score the test split -> data/predictions/<task>/<model>.csv.

Its wall-clock time goes to ``metrics/<task>/timing/predict/<model>.json`` (not cached).
"""

import argparse
import time

import pandas as pd

from clinlm.io import write_csv, write_json
from clinlm.metrics import timing_path
from clinlm.params import load_params
from clinlm.paths import predictions_path, setup_logging
from clinlm.predict import predict_table
from clinlm.runs import make_run

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="runs.<name> in params.yaml")
    args = ap.parse_args()
    params = load_params()
    run = make_run(args.run, params)
    test = pd.read_parquet(run.data_dir / "test.parquet")
    t0 = time.perf_counter()
    res = predict_table(run, test, params["predict"]["threshold"])
    seconds = time.perf_counter() - t0
    write_csv(predictions_path(run.task, run.model), res)
    write_json(timing_path(run.task, "predict", run.model),
               {"predict_seconds": round(seconds, 2), "rows": len(res),
                "rows_per_second": round(len(res) / seconds, 2) if seconds > 0 else None})
    print(f"{args.run}: {len(res)} predictions in {seconds:.1f} s")
