"""Stage train: fit one (task, model) run with its method; save to data/models/<task>/<model>.

With ``models.<m>.launch`` asking for several processes the stage re-executes itself under
torchrun (``clinlm.launch``); then only the main process writes files.

Wall-clock figures (``train_seconds``, ``tokens_per_second``, ``stage_seconds``, ...) go to
``metrics/<task>/timing/train/<model>.json`` (not cached), never into ``train_info.json``: the
model folder is a cached output and evaluate's input, and must not change with the clock.
"""

import argparse
import sys
import time

import pandas as pd

from clinlm.io import write_json
from clinlm.launch import is_main_process, relaunch_if_needed
from clinlm.methods import get_method
from clinlm.metrics import split_timing, timing_path
from clinlm.paths import setup_logging
from clinlm.runs import make_run

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    # positional: torchrun (the multi-process relaunch) reads `--run` as its own `--run-path`
    ap.add_argument("run", help="a run name from runs.<method> in params.yaml")
    args = ap.parse_args()
    run = make_run(args.run)
    method = get_method(run.cfg["method"])
    method.check_ready(run)  # e.g. cohere: fail before any work without CO_API_KEY
    relaunch_if_needed("stages.train", sys.argv[1:], run.cfg.get("launch"))
    t0 = time.perf_counter()
    info, timing = split_timing(method.train(run, pd.read_parquet(run.data_dir / "train.parquet")))
    timing["stage_seconds"] = round(time.perf_counter() - t0, 1)
    if is_main_process():
        write_json(run.model_dir / "train_info.json", info)
        write_json(run.log_dir / "train_info.json", info)  # committed copy (cache: false)
        write_json(timing_path(run.task, "train", run.model), timing)
        print({**info, **timing})
