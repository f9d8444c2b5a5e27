"""Stage split: seeded, stratified train/test split (optionally grouped by patient)."""

import argparse

from clinlm.io import read_parquet, write_json, write_parquet
from clinlm.params import load_params
from clinlm.paths import interim_dir, processed_dir, raw_dir, read_json, setup_logging
from clinlm.split import split_table
from clinlm.tasks import SplitConfig

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    task = params["tasks"][args.task]
    split = SplitConfig.model_validate(task.get("split") or {}).model_dump()  # {}: the defaults
    table = read_parquet(interim_dir(args.task) / "table.parquet")
    train, test = split_table(table, seed=params["seed"], task_type=task["type"], **split)
    out = processed_dir(args.task)
    write_parquet(out / "train.parquet", train)
    write_parquet(out / "test.parquet", test)
    shared = set(train["group"]) & set(test["group"])
    downloaded = read_json(raw_dir(args.task) / "download.json")
    info = {"n_train": len(train), "n_test": len(test), "groups_on_both_sides": len(shared),
            "data_source": downloaded["data_source"], **split}
    if task["type"] == "classification":
        info["train_prevalence"] = float(train["label"].eq("Yes").mean())
        info["test_prevalence"] = float(test["label"].eq("Yes").mean())
    elif task["type"] == "multiclass":  # each label's share of the rows
        info["train_shares"] = train["label"].astype(str).value_counts(normalize=True).to_dict()
        info["test_shares"] = test["label"].astype(str).value_counts(normalize=True).to_dict()
    else:
        info["train_mean"] = float(train["label"].mean())  # the mean predictor's constant
        if "noise_floor_mae" in downloaded:  # synthetic: the MAE of a perfect model
            info["noise_floor_mae"] = downloaded["noise_floor_mae"]
    write_json(out / "split.json", info)
    print(info)
