"""Stage statements: raw rows -> one English statement + label + f_* features per row."""

import argparse

from clinlm.io import write_parquet
from clinlm.params import load_params
from clinlm.paths import interim_dir, raw_dir, setup_logging
from clinlm.tasks import build_table

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    table = build_table(args.task, params["tasks"][args.task], raw_dir(args.task))
    write_parquet(interim_dir(args.task) / "table.parquet", table)
    print(f"{args.task}: {len(table)} statements; e.g.\n  {table['statement'].iloc[0]}")
