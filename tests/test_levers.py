"""bench/levers.py: the levers table reads budget-curve results and pairs each run with the ref."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.levers import levers_table


def _result(root: Path, name: str, p_yes: np.ndarray, y: np.ndarray) -> Path:
    """A budget-curve results file whose final point's eval predictions are ``p_yes``."""
    point = root / "data" / "budget_curve" / name / "points" / "step-000010"
    point.mkdir(parents=True)
    ids = [f"r{i}" for i in range(len(y))]
    pd.DataFrame({"id": ids, "y_true": np.where(y == 1, "Yes", "No"), "p_yes": p_yes}).to_csv(
        point / "pred_eval.csv", index=False)
    base = {"roc_auc": 0.8, "roc_auc_ci95": [0.7, 0.9]}
    data = {"spec": {"seed": 0}, "baseline": {"n_train": 1234},
            "points": [{"labels": ["final"], "rows_seen": 80, "train_seconds": 120.0,
                        "tokens_seen": 4000, "dir": str(point.relative_to(root)),
                        "scores": {"eval": {"baseline": base,
                                            "vs_baseline": {"roc_auc": {"diff": -0.1}}}}}]}
    out = root / "bench" / "levers" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out


def test_each_lever_is_paired_with_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    noise = rng.normal(0, 1, 400)
    ref = _result(tmp_path, "ref", y + 2.0 * noise, y)
    same = _result(tmp_path, "same", y + 2.0 * noise + 1e-3 * rng.normal(0, 1, 400), y)
    better = _result(tmp_path, "better", y + 0.3 * noise, y)
    table = levers_table(ref, [ref, same, better], {"better": "less noise"}, n_boot=300)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "(reference)" in lines["ref"] and "| 80 | 2.0 | 4,000 |" in lines["ref"]
    assert "(no difference)" in lines["same"]
    assert "less noise" in lines["better"] and "(better)" in lines["better"]
    assert lines["gbdt (baseline)"].count("1,234") == 1


def test_runs_on_other_rows_are_refused(tmp_path: Path) -> None:
    y = np.array([0, 1] * 20)
    ref = _result(tmp_path, "ref", y * 1.0, y)
    other = _result(tmp_path, "other", y[:30] * 1.0, y[:30])
    with pytest.raises(SystemExit, match="evaluation rows"):
        levers_table(ref, [other], {})


def test_every_dvc_exp_lever_sets_an_existing_params_key() -> None:
    """bench/levers_exp.py: each ``-S key=value`` names a key params.yaml has (a typo would
    queue an experiment that fails, or quietly adds a key no code reads)."""
    import yaml

    from bench.levers_exp import LEVERS
    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, sets in LEVERS.items():
        for s in sets:
            node = params
            for part in s.split("=", 1)[0].split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {s}: no key {part!r}"
                node = node[part]


def test_dvc_exp_table_reads_dvc_exp_show_json(monkeypatch) -> None:
    """The levers table takes ROC-AUC / MAE per (task, model) from ``dvc exp show --json``,
    one row for the workspace and one per named experiment; a missing metric is a blank."""
    from bench.levers_exp import COLUMNS, collect, table

    def metrics(auc: float) -> dict:
        return {"metrics/noshow/smollm2-sft.json": {"data": {"roc_auc": auc}},
                "metrics/vascular_age/gbdt.json": {"data": {"mae": 5.9}}}

    shown = [{"rev": "workspace", "data": {"metrics": metrics(0.6)}},
             {"rev": "abc123", "data": {"metrics": metrics(0.6)},
              "experiments": [{"name": "lr1e-3", "revs": [
                  {"rev": "def456", "name": "lr1e-3", "data": {"metrics": metrics(0.65)}}]}]}]
    monkeypatch.setattr("bench.levers_exp.dvc", lambda *a: json.dumps(shown))
    rows = collect()
    assert [r["name"] for r in rows] == ["workspace", "lr1e-3"]
    assert rows[1]["noshow/smollm2-sft/roc_auc"] == 0.65
    assert rows[1]["changes"] == "models.smollm2-sft.training.learning_rate=0.001"
    lines = table(rows)
    assert len(lines) == 4 and "| 0.650 |" in lines[3] and "| 5.900 |" in lines[3]
    assert lines[3].count("|") == len(COLUMNS) + 3  # blanks where a run has no metric
