"""Stage predict: score the test split -> data/predictions/<task>/<model>.csv.

With ``models.<m>.launch`` asking for several processes the stage re-executes itself under
torchrun: each process scores its share of the rows, the main process writes the one CSV.
Its wall-clock time goes to ``metrics/<task>/timing/predict/<model>.json`` (not cached).
"""

import argparse
import sys
import time

from clinlm.io import read_parquet, write_csv, write_json
from clinlm.launch import is_main_process, relaunch_if_needed, world_size
from clinlm.metrics import timing_path
from clinlm.params import load_params
from clinlm.paths import predictions_path, setup_logging
from clinlm.predict import predict_table
from clinlm.runs import make_run

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    # positional: torchrun (the multi-process relaunch) reads `--run` as its own `--run-path`
    ap.add_argument("run", help="a run name from runs.<method> in params.yaml")
    args = ap.parse_args()
    params = load_params()
    run = make_run(args.run, params)
    relaunch_if_needed("stages.predict", sys.argv[1:], run.cfg.get("launch"))
    test = read_parquet(run.data_dir / "test.parquet")
    t0 = time.perf_counter()
    res = predict_table(run, test, params["predict"]["threshold"])
    seconds = time.perf_counter() - t0
    if is_main_process():
        write_csv(predictions_path(run.task, run.model), res)
        write_json(timing_path(run.task, "predict", run.model),
                   {"predict_seconds": round(seconds, 2), "rows": len(res), "processes": world_size(),
                    "rows_per_second": round(len(res) / seconds, 2) if seconds > 0 else None})
        print(f"{args.run}: {len(res)} predictions in {seconds:.1f} s")
