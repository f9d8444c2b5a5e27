"""Stage format: Cohere chat-finetune JSONL (train + an eval slice of the train split)."""

import argparse

from clinlm.formats import write_formats
from clinlm.io import read_parquet
from clinlm.params import load_params
from clinlm.paths import processed_dir, setup_logging

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    task = params["tasks"][args.task]
    d = processed_dir(args.task)
    counts = write_formats(read_parquet(d / "train.parquet"), read_parquet(d / "test.parquet"),
                           task, task["type"], d / "formats",
                           eval_fraction=task.get("format", {}).get("eval_fraction", 0.1),
                           seed=params["seed"])
    print(counts)
