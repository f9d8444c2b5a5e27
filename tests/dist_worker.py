"""One process of a distributed test run (started by torchrun from ``run_distributed``).

Reads a JSON spec (a Run's fields, the training / prediction table as records), trains and/or
predicts through the real method code, and writes what this rank did to ``<out>/rank<r>.json``:
its train_info, its predictions, and every file it opened for writing under ``watch``
(an audit hook sees each ``open``/``os.open`` for writing, whoever calls it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
rank = int(os.environ.get("RANK", 0))
written: list[str] = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not args or not isinstance(args[0], str | os.PathLike):
        return
    path, mode, flags = str(args[0]), args[1], args[2] if len(args) > 2 else 0
    writing = (mode is not None and any(c in str(mode) for c in "wax+")) or \
        (mode is None and isinstance(flags, int) and flags & WRITE)
    if writing and path.startswith(spec["watch"]):
        written.append(path)


sys.addaudithook(_audit)

import pandas as pd  # noqa: E402

from clinlm.methods import Run, get_method  # noqa: E402
from clinlm.predict import predict_table  # noqa: E402

run = Run(**spec["run"])
df = pd.DataFrame(spec["rows"])
out: dict = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1))}
if spec.get("train", True):
    out["info"] = get_method(run.cfg["method"]).train(run, df)
if spec.get("predict"):
    out["predictions"] = predict_table(run, df).to_dict(orient="list")
out["written"] = sorted(set(written))
Path(spec["out"]).mkdir(parents=True, exist_ok=True)
(Path(spec["out"]) / f"rank{rank}.json").write_text(json.dumps(out, default=str))
