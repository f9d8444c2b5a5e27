"""Stage format: chat JSONL for SFT and Cohere chat-finetune JSONL."""

import argparse

import pandas as pd

from clinlm.formats import write_formats
from clinlm.params import load_params
from clinlm.pipeline import processed_dir, setup_logging

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    task = params["tasks"][args.task]
    d = processed_dir(args.task)
    counts = write_formats(pd.read_parquet(d / "train.parquet"), pd.read_parquet(d / "test.parquet"),
                           task, task["type"], d / "formats",
                           eval_fraction=task.get("format", {}).get("eval_fraction", 0.1),
                           seed=params["seed"])
    print(counts)
