"""The cheap levers of issue 17 as DVC experiments on the default pipeline (synthetic data).

    python bench/levers_exp.py queue     # one `dvc exp run --queue -n <lever> -S ...` per lever
    dvc exp run --run-all                # or: dvc queue start; dvc queue status
    dvc exp show -A --only-changed       # the sweep, as DVC shows it (-A: on any baseline commit)
    python bench/levers_exp.py table     # -> bench/levers_exp_synthetic.{md,json}

Each lever changes params.yaml keys only, so DVC reruns just what depends on them: a
`models.smollm2-sft.*` change retrains and rescores the sft runs of both tasks (and their
stacks), a `tasks.noshow.*` change reruns the no-show statements and everything after. The
table puts every experiment beside the workspace's own run (`workspace`) and the gbdt baseline
of the same data. The real-file levers (Kaggle, 2,000 training rows, whole-split scoring per
lever would cost 11 min each) are in bench/levers_noshow_kaggle.md (bench/levers.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/levers_exp_synthetic"
SFT = "models.smollm2-sft"
LEVERS: dict[str, list[str]] = {
    "compact": ["tasks.noshow.statements.style=compact"],
    "no-system": ["tasks.noshow.prompt.system=''"],
    "lr1e-3": [f"{SFT}.training.learning_rate=0.001"],
    "r32": [f"{SFT}.lora.r=32", f"{SFT}.lora.lora_alpha=64"],
    "epochs2": [f"{SFT}.training.num_train_epochs=2"],
    "rows640": [f"{SFT}.max_train_rows=640"],
}
# (task, model, metric) columns of the table
COLUMNS = [("noshow", m, "roc_auc") for m in ("smollm2-sft", "smollm2-head", "gbdt", "stack")] + [
    ("vascular_age", m, "mae") for m in ("smollm2-sft", "smollm2-head", "gbdt", "stack")]


def dvc(*args: str) -> str:
    """Run ``dvc`` (the one next to this Python) in the project root; its stdout."""
    exe = Path(sys.executable).parent / "dvc"
    r = subprocess.run([str(exe) if exe.exists() else "dvc", *args], cwd=ROOT, text=True,
                       capture_output=True)
    if r.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def queue(names: list[str]) -> None:
    """Queue one experiment per lever, named after it."""
    for name in names:
        sets = [x for s in LEVERS[name] for x in ("-S", s)]
        dvc("exp", "run", "--queue", "-n", name, *sets)
        print(f"queued {name}: {' '.join(LEVERS[name])}")


def _metric(metrics: dict[str, Any], task: str, model: str, key: str) -> float | None:
    for path, body in metrics.items():
        if path.replace("\\", "/") == f"metrics/{task}/{model}.json":
            return (body.get("data") or {}).get(key)
    return None


def collect() -> list[dict[str, Any]]:
    """``dvc exp show --json --all-commits`` -> one row per experiment (any baseline commit) and the workspace."""
    rows = []
    for commit in json.loads(dvc("exp", "show", "--json", "--all-commits")):
        runs = [("workspace" if commit.get("rev") == "workspace" else None, commit)]
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                runs.append((rev.get("name") or exp.get("name"), rev))
        for name, rev in runs:
            data = rev.get("data") or {}
            if name is None or not data.get("metrics"):
                continue
            row = {"name": name, "rev": rev.get("rev"), "changes": " ".join(LEVERS.get(name, []))}
            for task, model, key in COLUMNS:
                row[f"{task}/{model}/{key}"] = _metric(data["metrics"], task, model, key)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: ROC-AUC (no-show) and MAE (vascular age) of every run, per experiment."""
    head = [f"{t.split('_')[0]} {m} {'MAE' if k == 'mae' else 'ROC-AUC'}" for t, m, k in COLUMNS]
    lines = ["| experiment | changes | " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[f'{t}/{m}/{k}']:.3f}" if r.get(f"{t}/{m}/{k}") is not None else ""
                 for t, m, k in COLUMNS]
        lines.append(f"| {r['name']} | {r['changes'] or '(params.yaml)'} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["queue", "table"])
    ap.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    args = ap.parse_args()
    if args.action == "queue":
        queue(args.levers)
        return
    from clinlm.io import write_json
    rows = collect()
    write_json(OUT.with_suffix(".json"), {"command": "python bench/levers_exp.py table",
                                          "levers": LEVERS, "rows": rows})
    text = "\n".join(table(rows)) + "\n"
    OUT.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
