"""Learning curve: test ROC-AUC against the number of training rows, LLM next to the baseline.

Run from a repository whose pipeline has produced the split (and, optionally, the full run
of the LLM), e.g. after `dvc repro` on the real Kaggle file (README "Real Kaggle data"):

    python bench/learning_curve.py --run noshow-smollm2-sft --rows 250 500 1000 \
        --eval-rows 2000 --out bench/learning_curve_noshow.json

* Each LLM point is a fresh fine-tune of the run's model entry with ``max_train_rows = n``
  (the same seeded, stratified subsample the train stage uses, so smaller sets are nested
  in larger ones), saved in a scratch folder and scored on the same fixed, seeded,
  stratified subsample of the TEST split (``--eval-rows``; scoring all ~22,100 test rows
  takes ~1 h per point on 2 CPU cores).
* The pipeline's own trained model (``data/models/<task>/<model>``) is added as a point: read
  from its predictions (``data/predictions/<task>/<model>.csv``) restricted to the same
  evaluation rows, or, when predict has not run, scored on those rows.
* The baseline (the run's task with ``models.gbdt``) is trained on the same ``n`` rows and on
  the whole training split, and scored on the same evaluation rows.

Writes JSON (one record per point) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0] and its bench.py would shadow the `bench` folder
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.budget_curve import eval_subset, variant_run  # noqa: E402
from clinlm.io import write_json  # noqa: E402
from clinlm.methods import get_method  # noqa: E402
from clinlm.methods.interface import subsample  # noqa: E402
from clinlm.metrics import classification_metrics, timing_path  # noqa: E402
from clinlm.params import load_params  # noqa: E402
from clinlm.paths import predictions_path  # noqa: E402
from clinlm.predict import predict_table  # noqa: E402
from clinlm.runs import make_run  # noqa: E402


def score(run, train_df: pd.DataFrame | None, eval_df: pd.DataFrame, threshold: float) -> dict:
    """Train ``run`` on ``train_df`` (unless None: already trained) and evaluate on ``eval_df``."""
    info: dict = {}
    if train_df is not None:
        info = get_method(run.cfg["method"]).train(run, train_df)
    pred = predict_table(run, eval_df, threshold)
    m, _ = classification_metrics(pred)
    return {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "brier": m["brier"],
            "train_seconds": info.get("train_seconds")}  # method.train's own figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="runs.<name> of the LLM (classification task)")
    ap.add_argument("--baseline", default="gbdt", help="models.<name> of the baseline")
    ap.add_argument("--rows", type=int, nargs="*", default=[],
                    help="training-set sizes to fine-tune (besides the pipeline's own model)")
    ap.add_argument("--eval-rows", type=int, default=2000, help="test rows scored per point")
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = ap.parse_args()

    params = load_params()
    run = make_run(args.run, params)
    if run.task_type != "classification":
        sys.exit(f"{args.run}: the learning curve reports ROC-AUC; it needs a classification task")
    threshold = params["predict"]["threshold"]
    train = pd.read_parquet(run.data_dir / "train.parquet")
    test = pd.read_parquet(run.data_dir / "test.parquet")
    evald = eval_subset(test, args.eval_rows, run)
    records: list[dict] = []

    def add(method: str, n: int, res: dict) -> None:
        rec = {"method": method, "n_train": n, "n_eval": len(evald), **res}
        records.append(rec)
        print(json.dumps(rec), flush=True)

    # the baseline: the same sizes (the pipeline model's too) + the whole training split
    base_cfg = copy.deepcopy(params["models"][args.baseline])
    info_path = run.model_dir / "train_info.json"
    sizes = set(args.rows) | {len(train)}
    if info_path.exists():
        sizes.add(int(json.loads(info_path.read_text())["n_train"]))
    scratch = Path(tempfile.mkdtemp(prefix="lc-", dir=ROOT / "data"))
    try:
        for n in sorted(sizes):
            brun = variant_run(run, scratch / f"{args.baseline}-{n}", model=args.baseline,
                               cfg=base_cfg)
            add(args.baseline, n, score(brun, subsample(train, n, run.seed, run.task_type),
                                        evald, threshold))
        # the pipeline's own LLM run, if it has predictions
        pred_path = predictions_path(run.task, run.model)
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if pred_path.exists():  # scored already: read the evaluation rows' predictions
                pred = pd.read_csv(pred_path, dtype={"id": str}).set_index("id")
                pred = pred.loc[evald["id"].astype(str)].reset_index()
                m, _ = classification_metrics(pred)
                res = {k: m[k] for k in ("roc_auc", "pr_auc", "brier")}
            else:  # trained, not scored: score the evaluation rows only
                res = score(run, None, evald, threshold)
            timing = timing_path(run.task, "train", run.model)  # the stage keeps times apart
            res["train_seconds"] = (json.loads(timing.read_text()).get("train_seconds")
                                    if timing.exists() else None)
            add(run.model, int(info["n_train"]), res)
        done = {r["n_train"] for r in records if r["method"] == run.model}
        for n in sorted(set(args.rows) - done):
            lrun = variant_run(run, scratch / f"{run.model}-{n}", max_train_rows=n)
            t0 = time.time()
            res = score(lrun, train, evald, threshold)
            res["seconds"] = round(time.time() - t0, 1)
            add(run.model, n, res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    records.sort(key=lambda r: (r["method"], r["n_train"]))
    write_json(args.out, {"run": args.run, "task": run.task, "eval_rows": len(evald),
                          "n_train_available": len(train), "points": records})
    print("\n| method | training rows | ROC-AUC | PR-AUC | train s |\n|---|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['method']} | {r['n_train']} | {r['roc_auc']:.3f} | {r['pr_auc']:.3f} | "
              f"{r['train_seconds'] if r['train_seconds'] is not None else ''} |")


if __name__ == "__main__":
    main()
