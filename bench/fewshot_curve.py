"""Few-shot curve: when does the LLM beat gradient boosting? Metric vs training rows, per table.

    python bench/fewshot_curve.py --task breast_cancer --task diabetes \\
        --rows 16 32 64 128 256 512 all --seeds 3 --llm smollm2-sft --llm-seeds 1 \\
        --out docs/results/fewshot

Run after `dvc repro` (it reads each task's split, ``data/processed/<task>``, and the base
folder the LLM model loads). For every size ``n`` and seed, the same seeded, stratified
subsample of the training split trains gbdt (``models.gbdt``) and each ``--llm`` model entry
(``max_train_rows`` = all of the subsample; the entry's other settings as in params), and each
is scored on the SAME test rows (all of them, or ``--eval-rows``, a seeded stratified
subsample, for a large table). Intervals: 95 % paired bootstrap over those test rows
(``clinlm.bootstrap.compare_runs``), the LLM's difference from the gbdt of the same rows and
seed. Below 10 leaves' worth of rows, gbdt's ``min_samples_leaf`` is scaled to ``n // 20``
(at least 2; recorded per point): the pipeline's leaf of 40 rows cannot split 16 rows, and a
baseline that cannot learn would flatter the LLM. ``--kaggle FILE`` adds the real no-show table (the noshow task on that file, split as in
params, in a scratch folder).

The LLM points are the expensive ones, so a curve is built in several calls: ``--resume``
keeps the points already in ``<out>/<task>.json`` and computes only the missing (method, rows,
seed) points (gbdt, seconds per point, is refitted every time and gives the same numbers);
``--llm-seeds K --llm-seeds-max-rows N`` trains the LLMs on K subsamples where the curve has
at most N rows (where a point's spread between subsamples is largest), one above;
``--llm-max-rows N`` leaves the LLMs out above N rows (the Kaggle table's 88,000 training
rows are days of CPU fine-tuning; the cap is recorded in the JSON).

Writes ``<out>/<task>.json`` (every point), ``<out>/<task>.csv`` (one row per method, size and
seed: the ``dvc plots`` curve) and prints a markdown table per task.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.budget_curve import cpu_model, eval_subset, variant_run  # noqa: E402
from clinlm.bootstrap import compare_runs  # noqa: E402
from clinlm.io import write_csv, write_json  # noqa: E402
from clinlm.methods import get_method  # noqa: E402
from clinlm.methods.interface import Run, subsample  # noqa: E402
from clinlm.params import load_params  # noqa: E402
from clinlm.predict import predict_table  # noqa: E402
from clinlm.runs import make_run  # noqa: E402

METRIC = {"classification": "roc_auc", "regression": "mae"}


def kaggle_split(params: dict, path: Path, scratch: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real no-show table: the noshow task's download (csv source), statements and split."""
    from clinlm.split import split_table
    from clinlm.tasks import SplitConfig, get_task

    cfg = copy.deepcopy(params["tasks"]["noshow"])
    cfg["download"].update(source="csv", csv_path=str(path))
    task = get_task("noshow", cfg)
    task.download(cfg, params["seed"], scratch)
    table = task.build_table(cfg, scratch)
    split = SplitConfig.model_validate(cfg.get("split") or {}).model_dump()
    return split_table(table, seed=params["seed"], task_type=cfg["type"], **split)


def gbdt_run_of(params: dict, task: str) -> str:
    """The task's gbdt run in params (the curve's runs copy its task and seed)."""
    for name, spec in (params["runs"].get("gbdt") or {}).items():
        if spec["task"] == task:
            return name
    raise SystemExit(f"no runs.gbdt entry for task {task!r} in params.yaml")


def fit_predict(run: Run, train: pd.DataFrame, test: pd.DataFrame, threshold: float
                ) -> tuple[pd.DataFrame, float]:
    """Train ``run`` on every row of ``train``, predict ``test``; (predictions, seconds)."""
    t0 = time.perf_counter()
    get_method(run.cfg["method"]).train(run, train)
    pred = predict_table(run, test, threshold)
    return pred, round(time.perf_counter() - t0, 1)


def llm_seeds(n: int, n_all: int, args) -> int:
    """How many subsamples the LLMs train on at ``n`` rows (0: no LLM point at this size)."""
    if args.llm_max_rows is not None and n > args.llm_max_rows:
        return 0
    few = args.llm_seeds_max_rows is None or n <= args.llm_seeds_max_rows
    return 1 if n >= n_all else args.llm_seeds if few else 1


def curve(task: str, train: pd.DataFrame, test: pd.DataFrame, params: dict, args,
          scratch: Path, done: set[tuple[str, int, int]] = frozenset()) -> list[dict[str, Any]]:
    """Every point of one task's curve not in ``done`` ((method, rows, seed) kept from an
    earlier call): gbdt at every size and seed, each LLM where :func:`llm_seeds` says."""
    base = make_run(gbdt_run_of(params, task), params)
    ttype = base.task_type
    metric = METRIC[ttype]
    threshold = params["predict"]["threshold"]
    sizes = sorted({len(train) if r == "all" else min(int(r), len(train)) for r in args.rows})
    points: list[dict[str, Any]] = []
    for n in sizes:
        seeds = range(args.seeds if n < len(train) else 1)  # all rows: one subsample
        for seed in seeds:
            rows = subsample(train, n, base.seed + seed, ttype)
            gcfg = copy.deepcopy(base.cfg)
            leaf = gcfg["hist_gbdt"].get("min_samples_leaf", 20)
            if n < 10 * leaf:  # a leaf of 40 rows cannot split 16: scale it down (recorded)
                gcfg["hist_gbdt"]["min_samples_leaf"] = leaf = max(2, n // 20)
            brun = dataclasses.replace(variant_run(base, scratch / f"gbdt-{n}-{seed}", cfg=gcfg),
                                       seed=base.seed + seed)
            llms = [m for m in args.llm if seed < llm_seeds(n, len(train), args)
                    and (m, n, seed) not in done]
            if (("gbdt", n, seed) in done) and not llms:
                continue  # nothing new at this point: not even gbdt's seconds are spent
            preds = {"gbdt": fit_predict(brun, rows, test, threshold)}
            for llm in llms:
                lrun = dataclasses.replace(
                    variant_run(base, scratch / f"{llm}-{n}-{seed}", model=llm,
                                cfg=params["models"][llm], max_train_rows=None),
                    seed=base.seed + seed)
                preds[llm] = fit_predict(lrun, rows, test, threshold)
            cmp = compare_runs(ttype, {k: p for k, (p, _) in preds.items()}, "gbdt",
                               args.n_boot, seed=0)
            for name, res in cmp.items():
                point = {"task": task, "method": name, "n_train": n, "seed": seed,
                         "n_test": res["n_rows"], "metric": metric,
                         "value": res["point"][metric], "ci95": res["ci95"][metric],
                         "seconds": preds[name][1]}
                if name == "gbdt":
                    point["min_samples_leaf"] = leaf
                if "vs_baseline" in res:
                    d = res["vs_baseline"][metric]
                    point.update(vs_gbdt=d["diff"], vs_gbdt_ci95=d["ci95"],
                                 verdict=d["verdict"])
                points.append(point)
                print(json.dumps(point), flush=True)
    return points


def point_key(p: dict[str, Any]) -> tuple[str, int, int]:
    return (p["method"], int(p["n_train"]), int(p["seed"]))


def read_points(path: Path, n_test: int) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The points of an earlier call (``--resume``), keyed by (method, rows, seed); none when
    the file is absent. Points scored on other test rows cannot share a curve: an error."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("n_test") != n_test:
        raise SystemExit(f"{path}: scored on {data.get('n_test')} test rows, this call on "
                         f"{n_test}; --resume needs the same test rows (or a new --out)")
    return {point_key(p): p for p in data["points"]}


def markdown(task: str, points: list[dict[str, Any]]) -> str:
    metric = points[0]["metric"]
    lines = [f"### {task} ({metric}, {points[0]['n_test']} test rows)", "",
             f"| rows | method | seed | {metric} [95 % CI] | vs gbdt [95 % CI] | |",
             "|---:|---|---:|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["n_train"], p["method"] != "gbdt", p["method"],
                                           p["seed"])):
        vs = (f"{p['vs_gbdt']:+.3f} [{p['vs_gbdt_ci95'][0]:+.3f}, {p['vs_gbdt_ci95'][1]:+.3f}]"
              if "vs_gbdt" in p else "")
        lines.append(f"| {p['n_train']} | {p['method']} | {p['seed']} | {p['value']:.3f} "
                     f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | {vs} | {p.get('verdict', '')} |")
    return "\n".join(lines)


def summary_markdown(data: dict[str, Any]) -> str:
    """One saved curve (``<task>.json``) as a table: per size, gbdt over its subsamples and
    each LLM's value per subsample with its paired difference from the gbdt of the same rows
    and seed (95 % interval, verdict)."""
    points, metric = data["points"], data["points"][0]["metric"]
    llms = sorted({p["method"] for p in points} - {"gbdt"})
    sizes = sorted({p["n_train"] for p in points})
    lines = [f"| rows | gbdt {metric} (subsamples) | "
             + " | ".join(f"{m} {metric} [Δ vs gbdt, 95 % CI]" for m in llms) + " |",
             "|---:|---|" + "---|" * len(llms)]
    for n in sizes:
        g = sorted(p["value"] for p in points if p["method"] == "gbdt" and p["n_train"] == n)
        cells = [f"{g[0]:.3f}" if len(g) == 1 else f"{g[0]:.3f}–{g[-1]:.3f} ({len(g)})"]
        for m in llms:
            mine = sorted((p for p in points if p["method"] == m and p["n_train"] == n),
                          key=lambda p: p["seed"])
            cells.append("; ".join(
                f"{p['value']:.3f} [{p['vs_gbdt']:+.3f}, {p['vs_gbdt_ci95'][0]:+.3f} to "
                f"{p['vs_gbdt_ci95'][1]:+.3f}] {p['verdict']}" for p in mine) or "—")
        label = "all" if n == data["n_train_available"] else str(n)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", default=[], help="a task of params.yaml")
    ap.add_argument("--kaggle", type=Path, help="the real no-show CSV / zip (optional)")
    ap.add_argument("--rows", nargs="+", default=["16", "32", "64", "128", "256", "512", "all"])
    ap.add_argument("--seeds", type=int, default=3, help="subsamples per size below all rows")
    ap.add_argument("--llm", action="append", default=[], help="models.<name> of an LLM")
    ap.add_argument("--llm-seeds", type=int, default=1, help="subsamples the LLMs train on")
    ap.add_argument("--llm-seeds-max-rows", type=int, default=None,
                    help="--llm-seeds only up to this many rows (one subsample above)")
    ap.add_argument("--llm-max-rows", type=int, default=None,
                    help="no LLM point above this many rows (default: every size)")
    ap.add_argument("--summary", action="store_true",
                    help="print the saved curves of --out as markdown tables, compute nothing")
    ap.add_argument("--resume", action="store_true",
                    help="keep the points already in <out>/<task>.json; compute the others")
    ap.add_argument("--eval-rows", type=int, default=None, help="test rows (default: all)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fewshot")
    args = ap.parse_args()
    if args.summary:
        for path in sorted(args.out.glob("*.json")):
            data = json.loads(path.read_text())
            print(f"### {data['task']} ({data['points'][0]['metric']}, {data['n_test']} test "
                  f"rows)\n\n{summary_markdown(data)}\n")
        return
    params = load_params()
    jobs = [(t, None) for t in args.task] + ([("noshow_kaggle", args.kaggle)] if args.kaggle else [])
    scratch = Path(tempfile.mkdtemp(prefix="fewshot-", dir=ROOT / "data"))
    try:
        for task, kaggle in jobs:
            if kaggle is not None:
                train, test = kaggle_split(params, kaggle, scratch / "kaggle")
                key = "noshow"
            else:
                from clinlm.paths import processed_dir
                train = pd.read_parquet(processed_dir(task) / "train.parquet")
                test = pd.read_parquet(processed_dir(task) / "test.parquet")
                key = task
            ttype = params["tasks"][key]["type"]
            if args.eval_rows:
                test = eval_subset(test, args.eval_rows, make_run(gbdt_run_of(params, key),
                                                                  params))
            old = read_points(args.out / f"{task}.json", len(test)) if args.resume else {}
            t0 = time.perf_counter()
            new = curve(key, train, test, params, args, scratch / task, set(old))
            points = sorted({**old, **{point_key(p): p for p in new}}.values(), key=lambda p: (
                p["n_train"], p["seed"], p["method"] != "gbdt", p["method"]))
            meta = {"task": task, "type": ttype, "n_train_available": len(train),
                    "n_test": len(test), "cpu": cpu_model(), "seconds": round(
                        time.perf_counter() - t0), "command": " ".join(sys.argv),
                    "llm_max_rows": args.llm_max_rows}
            if old:  # which calls made the curve, each with its machine
                prev = json.loads((args.out / f"{task}.json").read_text())
                meta["earlier_calls"] = [*prev.get("earlier_calls", []), {
                    k: prev.get(k) for k in ("command", "cpu", "seconds")}]
            write_json(args.out / f"{task}.json", {**meta, "points": points})
            write_csv(args.out / f"{task}.csv", pd.DataFrame(
                [{k: p[k] for k in ("method", "n_train", "seed", "value")} for p in points]))
            print(markdown(task, points), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
