"""Stage inputs: content hashes of the user's files a task's download reads (runs every time).

A foreach stage cannot take a path from params (``csv_path``, ``ptbxl_dir``) as a DVC
dependency, so this stage is ``always_changed``: it hashes those files into
``data/raw/<task>.inputs.json`` on every ``dvc repro``, and ``download`` depends on that file.
Edit the CSV in place and download and everything after rerun; leave it and nothing else does
(the JSON is byte-identical, so DVC skips the stages after it). Generated sources (synthetic,
the Kaggle handle) have no user file: the JSON lists none.
"""

import argparse
import time

from clinlm.io import sha256_file, write_json
from clinlm.params import load_params
from clinlm.paths import inputs_path, setup_logging
from clinlm.tasks import get_task

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    args = ap.parse_args()
    params = load_params()
    t0 = time.perf_counter()
    files = []
    task = params["tasks"][args.task]
    for path in get_task(args.task, task).input_files(task):
        files.append({"path": str(path), "bytes": path.stat().st_size,
                      "sha256": sha256_file(path)})
    write_json(inputs_path(args.task), {"files": files})
    print(f"{args.task}: {len(files)} input file(s) hashed in {time.perf_counter() - t0:.1f} s")
