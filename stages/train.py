"""Stage train: fit one (task, model) run with its method; save to data/models/<task>/<model>."""

import argparse
import time

import pandas as pd

from clinlm.io import write_json
from clinlm.methods import get_method
from clinlm.pipeline import make_run, setup_logging

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="runs.<name> in params.yaml")
    args = ap.parse_args()
    run = make_run(args.run)
    method = get_method(run.cfg["method"])
    method.check_ready(run)  # e.g. cohere: fail before any work without CO_API_KEY
    t0 = time.time()
    info = method.train(run, pd.read_parquet(run.data_dir / "train.parquet"))
    info["stage_seconds"] = round(time.time() - t0, 1)
    write_json(run.model_dir / "train_info.json", info)
    write_json(run.log_dir / "train_info.json", info)  # committed copy (cache: false)
    print(info)
