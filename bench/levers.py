"""Levers table: budget-curve runs of the same size, each against a reference run.

Every lever is one ``bench/budget_curve.py`` run (its own ``--out``) that changes one thing
against the reference (same rows seen, same seeded evaluation rows of the test split). This
script reads their results files and predictions and prints one markdown table: each run's
ROC-AUC with its 95 % bootstrap interval, its training time and tokens, and its PAIRED
difference to the reference (``clinlm.bootstrap.compare_runs``: the same resampled rows for
both), so a lever whose interval holds 0 is reported as "no difference". The baseline
(``gbdt`` on the whole training split, scored on the same rows) is a row of the table too.

    python bench/levers.py --ref bench/levers/ref.json bench/levers/*.json \
        --label "ref=compact statements, no system prompt" --out bench/levers.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from clinlm.bootstrap import compare_runs  # noqa: E402
from clinlm.io import atomic_path  # noqa: E402


def final_predictions(result: Path) -> tuple[dict, pd.DataFrame]:
    """(results JSON, the final point's predictions on the evaluation rows)."""
    data = json.loads(result.read_text())
    final = next(p for p in data["points"] if "final" in p["labels"])
    folder = Path(final["dir"])
    if not folder.is_absolute():  # relative to the checkout the run was made in: look upwards
        folder = next((up / folder for up in result.resolve().parents if (up / folder).is_dir()),
                      folder)
    name = "pred_eval.csv" if (folder / "pred_eval.csv").exists() else "pred_all.csv"
    return data, pd.read_csv(folder / name, dtype={"id": str})


def levers_table(ref: Path, runs: list[Path], labels: dict[str, str], n_boot: int = 1000) -> str:
    """The markdown table (module docstring); ``labels``: run stem -> what it changes."""
    ref_data, ref_pred = final_predictions(ref)
    preds, meta = {ref.stem: ref_pred}, {ref.stem: ref_data}
    for r in runs:
        if r.resolve() != ref.resolve():
            meta[r.stem], preds[r.stem] = final_predictions(r)
    ids = set(ref_pred["id"])
    for name, p in preds.items():
        if set(p["id"]) != ids:
            raise SystemExit(f"{name}: not scored on the reference's evaluation rows")
    cmp = compare_runs("classification", preds, ref.stem, n_boot, ref_data["spec"]["seed"])
    rows = ["| run | changes | rows seen | train min | tokens seen | ROC-AUC [95 % CI] | "
            "vs ref [95 % CI] |", "|---|---|---:|---:|---:|---|---|"]
    for name, c in cmp.items():
        f = next(p for p in meta[name]["points"] if "final" in p["labels"])
        vs = c.get("vs_baseline", {}).get("roc_auc")
        lo, hi = c["ci95"]["roc_auc"]
        rows.append(f"| {name} | {labels.get(name, '')} | {f['rows_seen']:,} | "
                    f"{f['train_seconds'] / 60:.1f} | {f['tokens_seen']:,} | "
                    f"{c['point']['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}] | "
                    + (f"{vs['diff']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}] "
                       f"({vs['verdict']}) |" if vs else "(reference) |"))
    b = next(p for p in ref_data["points"] if "final" in p["labels"])["scores"]
    s = b.get("eval") or b.get("all")
    bl = s["baseline"]
    rows.append(f"| gbdt (baseline) | all {ref_data['baseline']['n_train']:,} training rows | | | | "
                f"{bl['roc_auc']:.3f} [{bl['roc_auc_ci95'][0]:.3f}, {bl['roc_auc_ci95'][1]:.3f}] | "
                f"{-s['vs_baseline']['roc_auc']['diff']:+.3f} vs ref |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """CLI (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="budget_curve results JSON files")
    ap.add_argument("--ref", type=Path, required=True, help="the reference run's results JSON")
    ap.add_argument("--label", action="append", default=[], metavar="STEM=TEXT",
                    help="what a run changes, e.g. full='full sentences'")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    labels = dict(x.split("=", 1) for x in args.label)
    table = levers_table(args.ref, args.runs, labels, args.n_boot)
    print(table)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(table)


if __name__ == "__main__":
    main()
