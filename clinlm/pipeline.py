"""Paths and glue shared by the stage scripts: one place that knows where files live."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clinlm.methods.base import Run
from clinlm.params import load_params, run_spec, validate

ROOT = Path(".")


def setup_logging() -> None:
    """Plain INFO logging for stage scripts (DVC shows it as the stage runs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def raw_dir(task: str) -> Path:
    return ROOT / "data" / "raw" / task


def interim_dir(task: str) -> Path:
    return ROOT / "data" / "interim" / task


def processed_dir(task: str) -> Path:
    return ROOT / "data" / "processed" / task


def model_dir(task: str, model: str) -> Path:
    return ROOT / "data" / "models" / task / model


def predictions_path(task: str, model: str) -> Path:
    return ROOT / "data" / "predictions" / task / f"{model}.csv"


def work_dir(task: str, model: str) -> Path:
    """Scratch state that must survive an interrupted stage (not a DVC output)."""
    return ROOT / "data" / "work" / task / model


def train_log_dir(task: str, model: str) -> Path:
    """Training curves (dvclive) of one run; small, committed for ``dvc plots diff``."""
    return ROOT / "metrics" / task / "train" / model


def metrics_path(task: str, model: str) -> Path:
    return ROOT / "metrics" / task / f"{model}.json"


def plots_dir(task: str, model: str) -> Path:
    return ROOT / "metrics" / task / "plots" / model


def make_run(run_name: str, params: dict[str, Any] | None = None) -> Run:
    """Build the ``Run`` for a ``runs.<name>`` entry of params.yaml."""
    params = params or load_params()
    task, task_cfg, model, model_cfg = run_spec(params, run_name)
    validate(params, library_models=[model])  # its bnb/lora/sft/training keys, before any work
    return Run(task=task, task_type=task_cfg["type"], model=model, cfg=model_cfg,
               model_dir=model_dir(task, model), data_dir=processed_dir(task),
               seed=params["seed"], task_cfg=task_cfg, log_dir=train_log_dir(task, model),
               work_dir=work_dir(task, model))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def preflight(params: dict[str, Any]) -> None:
    """Check every run's method can work (API keys present, ...) before the first stage."""
    from clinlm.methods import get_method
    from clinlm.params import all_runs
    for name in all_runs(params):
        run = make_run(name, params)
        get_method(run.cfg["method"]).check_ready(run)
