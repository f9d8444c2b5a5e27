"""Stage download: fetch or generate a task's raw data (kaggle | csv | ptbxl | synthetic)."""

import argparse

from clinlm.io import write_json
from clinlm.params import load_params, preflight
from clinlm.paths import raw_dir, setup_logging
from clinlm.tasks import download

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    preflight(params)  # e.g. a cohere run without CO_API_KEY stops here, before any work
    info = download(args.task, params["tasks"][args.task], params["seed"], raw_dir(args.task))
    write_json(raw_dir(args.task) / "download.json", info)
    print(info)
