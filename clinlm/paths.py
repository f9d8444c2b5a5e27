"""Where every file of the pipeline lives (one place), and the stage scripts' logging."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

ROOT = Path(".")


def setup_logging() -> None:
    """Plain INFO logging for stage scripts (DVC shows it as the stage runs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def raw_dir(task: str) -> Path:
    return ROOT / "data" / "raw" / task


def inputs_path(task: str) -> Path:
    """Hashes of the user's files the task's download reads (stage ``inputs``)."""
    return ROOT / "data" / "raw" / f"{task}.inputs.json"


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


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
