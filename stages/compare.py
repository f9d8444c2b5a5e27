"""Stage compare: every run side by side, with uncertainty -> reports/summary.{md,json}.

Its dependencies are the whole ``metrics`` and ``data/predictions`` folders (every run's
metrics file and predictions, whatever its task), so a task or run added in params is
compared with no edit to dvc.yaml; its outputs live in ``reports/``, outside them.

Runs are grouped by (task, data source): metrics from different data (e.g. a stale Kaggle run
beside synthetic ones) never share a table. Each group gets one table of the metrics and one
of 95 % bootstrap intervals: ROC-AUC / PR-AUC (classification), accuracy / macro ROC-AUC / log
loss (multiclass) or MAE (regression) for every
run, and each run's difference to the group's baseline (its gbdt run) with a PAIRED interval
-- the same resampled test rows, matched by ``id`` across the predictions CSVs, seeded by
params ``seed`` (``clinlm.bootstrap``). A difference whose interval holds 0 reads "no
difference". summary.json keeps ``{task: {model: metrics}}`` and adds per model ``ci95`` and
``vs_baseline``. summary.md also shows train / predict wall-clock seconds, read from
``metrics/<task>/timing/{train,predict}/<model>.json`` (blank when absent), and flags a run
whose training loss rose (``loss_rose``: from its metrics, else its committed train_info).
"""

import json
import math
from pathlib import Path

import pandas as pd

from clinlm.bootstrap import compare_runs
from clinlm.io import atomic_path, write_json
from clinlm.metrics import timing_path
from clinlm.params import all_runs, load_params
from clinlm.paths import metrics_path, predictions_path, setup_logging, train_log_dir

N_BOOT = 1000
BASELINE_METHOD = "gbdt"
COLUMNS = {
    "classification": ["roc_auc", "pr_auc", "accuracy", "f1", "recall", "brier"],
    "multiclass": ["accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc", "log_loss"],
    "regression": ["mae", "rmse", "r2", "pearson_r", "bias", "within_5y", "coverage_90",
                   "mean_predictor_mae", "noise_floor_mae"],
}
BOOT_METRICS = {"classification": ["roc_auc", "pr_auc"], "regression": ["mae"],
                "multiclass": ["accuracy", "macro_roc_auc", "log_loss"]}


def seconds(task: str, phase: str, model: str) -> float | None:
    """A run's wall-clock seconds for ``phase`` from its timing file; None when there is none."""
    path = timing_path(task, phase, model)
    if not path.exists():
        return None
    t = json.loads(path.read_text())
    # a method without its own train clock (e.g. cohere) falls back to the whole stage's
    return t.get(f"{phase}_seconds", t.get("stage_seconds"))


def _train_info(task: str, model: str) -> dict:
    """The run's committed train_info copy (``metrics/<task>/train/<model>``); {} if unreadable."""
    try:
        info = json.loads((train_log_dir(task, model) / "train_info.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def loss_rose(task: str, model: str, m: dict) -> bool:
    """True when the run's training loss rose (read defensively: absent or odd means no)."""
    flag = m.get("loss_rose")
    if flag is None:
        flag = _train_info(task, model).get("loss_rose")
    return flag is True


def fmt(v):
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return "" if v is None else str(v)


def fmt_ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def group_runs(params: dict) -> dict[tuple[str, str], dict[str, tuple[dict, dict]]]:
    """(task, data_source) -> {model: (run spec, metrics)}, in params order."""
    groups: dict[tuple[str, str], dict[str, tuple[dict, dict]]] = {}
    for spec in all_runs(params).values():
        m = json.loads(metrics_path(spec["task"], spec["model"]).read_text())
        key = (spec["task"], str(m.get("data_source", "unknown")))
        groups.setdefault(key, {})[spec["model"]] = (spec, m)
    return groups


def read_predictions(task: str, model: str) -> pd.DataFrame:
    path = predictions_path(task, model)
    if not Path(path).exists():
        raise FileNotFoundError(f"{task}/{model}: no predictions at {path}; run its predict stage")
    return pd.read_csv(path, dtype={"id": str})


def uncertainty_lines(ttype: str, models: dict, boot: dict, baseline: str | None,
                      seed: int) -> list[str]:
    """The markdown table of intervals and paired differences of one group."""
    metrics = BOOT_METRICS[ttype]
    n_rows = next(iter(boot.values()))["n_rows"]
    head = (f"95 % bootstrap intervals ({N_BOOT} resamples of the {n_rows} test rows, seed "
            f"{seed}); Δ = model − {baseline or 'baseline'} on the same resampled rows (paired)"
            + ("; for MAE lower is better" if ttype == "regression" else
               "; for log loss lower is better" if ttype == "multiclass" else "") + ":")
    cols = [f"{m} [95 % CI]" for m in metrics]
    if baseline:
        cols += [f"Δ {m} [95 % CI]" for m in metrics]
    lines = [head, "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in models:
        b = boot[name]
        cells = [f"{fmt(b['point'][m])} {fmt_ci(b['ci95'][m])}" for m in metrics]
        if baseline:
            for m in metrics:
                v = b.get("vs_baseline", {}).get(m)
                cells.append("(baseline)" if v is None else
                             f"{v['diff']:+.3f} {fmt_ci(v['ci95'])} {v['verdict']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def stack_lines(task: str, models: dict) -> list[str]:
    """For stacked runs: does the LLM add information the baseline lacks (its coefficient)."""
    lines = []
    for name, (spec, _) in models.items():
        st = _train_info(task, name).get("stack") if spec["method"] == "stack" else None
        if not isinstance(st, dict) or "llm_coef" not in st:
            continue
        c = st["llm_coef"]
        lines.append(f"* {name}: LLM ({st.get('llm')}) coefficient {fmt(c.get('value'))} "
                     f"{fmt_ci(c.get('ci95', [None, None]))} on {st.get('n_holdout')} held-out "
                     f"training rows — {c.get('verdict', '')}")
    return (["Stacked models (combiner fitted on held-out training rows):", ""] + lines + [""]
            if lines else [])


if __name__ == "__main__":
    setup_logging()
    params = load_params()
    summary: dict[str, dict] = {}
    lines = ["# Model comparison", "",
             "Generated by `dvc repro` (stage `compare`); every figure is on the held-out test "
             "split. Runs on different data sources are in separate tables.", ""]
    for (task, source), models in group_runs(params).items():
        ttype = params["tasks"][task]["type"]
        cols = COLUMNS[ttype]
        baselines = [n for n, (s, _) in models.items() if s["method"] == BASELINE_METHOD]
        baseline = baselines[0] if baselines else None
        preds = {n: read_predictions(task, n) for n in models}
        if baseline:  # the baseline first: its rows are the reference
            preds = {baseline: preds[baseline], **preds}
        boot = compare_runs(ttype, preds, baseline, n_boot=N_BOOT, seed=params["seed"])
        first = next(iter(models.values()))[1]
        lines += [f"## {task} ({ttype}; data: {source}, n_test={first['n_test']}; "
                  f"baseline: {baseline or 'none'})", "",
                  "| model | method | n_train | " + " | ".join(cols)
                  + " | train s | predict s | flags |",
                  "|---" * (len(cols) + 6) + "|"]
        for name, (_, m) in models.items():
            rose = loss_rose(task, name, m)
            lines.append(f"| {name} | {m['method']} | {m['n_train']} | "
                         + " | ".join(fmt(m.get(c)) for c in cols)
                         + f" | {fmt(seconds(task, 'train', name))}"
                         + f" | {fmt(seconds(task, 'predict', name))}"
                         + f" | {'training loss rose' if rose else ''} |")
            entry = {**m, "ci95": boot[name]["ci95"], "bootstrap": {
                "n_boot": N_BOOT, "seed": params["seed"], "n_rows": boot[name]["n_rows"]}}
            if "vs_baseline" in boot[name]:
                entry["vs_baseline"] = boot[name]["vs_baseline"]
                entry["baseline"] = baseline
            if rose:
                entry["loss_rose"] = True
            summary.setdefault(task, {})[name] = entry
        lines.append("")
        lines += uncertainty_lines(ttype, models, boot, baseline, params["seed"])
        lines += stack_lines(task, models)
    with atomic_path("reports/summary.md") as tmp:
        tmp.write_text("\n".join(lines))
    write_json("reports/summary.json", summary)
    print("\n".join(lines))
