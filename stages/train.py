"""Stage train: fit one (task, model) run with its method; save to data/models/<task>/<model>.

With ``models.<m>.launch`` asking for several processes the stage re-executes itself under
torchrun (``clinlm.launch``); then only the main process writes files.

Wall-clock figures (``train_seconds``, ``tokens_per_second``, ``stage_seconds``, ...) go to
``metrics/<task>/timing/train/<model>.json`` (not cached), never into ``train_info.json``: the
model folder is a cached output and evaluate's input, and must not change with the clock.
"""

import argparse
import logging
import shutil
import sys
import time
from contextlib import nullcontext

import pandas as pd

from clinlm.io import atomic_dir, read_parquet, write_json
from clinlm.launch import is_main_process, relaunch_if_needed
from clinlm.methods import get_method
from clinlm.metrics import split_timing, timing_path
from clinlm.paths import setup_logging
from clinlm.runs import make_run

log = logging.getLogger("stages.train")


def answer_range_check(run, method, train_df: pd.DataFrame) -> dict:
    """Regression: count training targets the answer range cannot say (a method that reads
    numbers from the answer grid, ``numeric_answer``, enumerates ``tasks.<task>.answer``
    [min, max]; such rows are clipped)."""
    if run.task_type != "regression" or not method.numeric_answer:
        return {}
    lo, hi = run.task_cfg["answer"]["min"], run.task_cfg["answer"]["max"]
    y = train_df["label"].astype(float)
    n_out = int(((y < lo) | (y > hi)).sum())
    if n_out:
        log.warning("%s: %d of %d training targets lie outside the answer range [%s, %s] "
                    "(tasks.%s.answer): the model can only answer inside it; widen the range "
                    "if those values are real", run.model, n_out, len(y), lo, hi, run.task)
    return {"n_train_targets_outside_answer_range": n_out}


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
    # the committed curves (cache: false, persist) are written into a temporary folder that
    # replaces the old one only when training succeeds: a failed run leaves them as they were
    main = is_main_process()
    if main:  # the temporary curves folders of a killed run (atomic_dir cleans up otherwise)
        for stale in run.log_dir.parent.glob(f".{run.log_dir.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(run.log_dir) if main else nullcontext(run.log_dir) as log_dir:
        run.log_dir = log_dir
        train_df = read_parquet(run.data_dir / "train.parquet")
        info, timing = split_timing(method.train(run, train_df))
        if "resumed_from_step" in info:  # this session's fact: the model equals an uninterrupted run's
            timing["resumed_from_step"] = info.pop("resumed_from_step")
        info.update(answer_range_check(run, method, train_df))
        timing["stage_seconds"] = round(time.perf_counter() - t0, 1)
        if main:
            write_json(run.model_dir / "train_info.json", info)
            write_json(log_dir / "train_info.json", info)  # committed copy (cache: false)
    if main:
        write_json(timing_path(run.task, "train", run.model), timing)
        print({**info, **timing})
