"""Speed and memory of a ``kind: table`` task's data steps on a large synthetic table.

``python bench/table_statements.py [--rows 100000] [--cols 100]``: writes a CSV of ``rows`` x
``cols`` (numbers, 0/1 flags, categories, some missing cells), then times the download step
(read, column inference, every cell checked) and the statements step (sentences + ``f_*``) of
:class:`clinlm.table.task.TableTask`, and reports each step's wall seconds and the process's
peak resident memory. Target (issue 28): statements for 100,000 x 100 in <= 20 s, <= 4 GiB,
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_csv(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"patient_id": [f"p{i}" for i in range(rows)]}
    for j in range(cols):
        kind = j % 5
        if kind == 3:
            v = rng.integers(0, 2, rows).astype(str)
        elif kind == 4:
            v = rng.choice(["low", "normal", "high", "critical"], rows)
        else:
            v = np.round(rng.lognormal(mean=j % 7, sigma=0.5, size=rows), 3).astype(str)
        v = np.where(rng.uniform(size=rows) < 0.05, "", v)
        data[f"var_{j:03d}"] = v
    data["outcome"] = rng.choice(["event", "no_event"], rows)
    pd.DataFrame(data).to_csv(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cols", type=int, default=100)
    args = ap.parse_args()
    from clinlm.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = tmp / "big.csv"
        make_csv(csv, args.rows, args.cols)
        cfg = {"kind": "table", "type": "classification", "answer": {},
               "prompt": {"question": "Event?"},
               "download": {"source": "csv", "csv_path": str(csv), "id_column": "patient_id",
                            "target_column": "outcome", "positive_label": "event"}}
        task = get_task("big", cfg)
        t0 = time.perf_counter()
        info = task.download(cfg, 0, tmp / "raw")
        t1 = time.perf_counter()
        table = task.build_table(cfg, tmp / "raw")
        t2 = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({
        "rows": args.rows, "cols": args.cols, "used": len(info["used"]),
        "download_seconds": round(t1 - t0, 2), "statements_seconds": round(t2 - t1, 2),
        "peak_rss_gib": round(peak_gib, 2), "statement_chars_median":
            int(table["statement"].str.len().median()),
        "cpu": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
