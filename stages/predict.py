"""Stage predict: score the test split -> data/predictions/<task>/<model>.csv."""

import argparse

import pandas as pd

from clinlm.io import write_csv
from clinlm.params import load_params
from clinlm.pipeline import make_run, predictions_path, setup_logging
from clinlm.predict import predict_table

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="runs.<name> in params.yaml")
    args = ap.parse_args()
    params = load_params()
    run = make_run(args.run, params)
    test = pd.read_parquet(run.data_dir / "test.parquet")
    res = predict_table(run, test, params["predict"]["threshold"])
    write_csv(predictions_path(run.task, run.model), res)
    print(f"{args.run}: {len(res)} predictions")
