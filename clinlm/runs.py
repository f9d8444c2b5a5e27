"""A ``Run`` from params.yaml: the (task, model) pair a train/predict stage works on."""

from __future__ import annotations

from typing import Any

from clinlm.methods.interface import Run
from clinlm.params import load_params, run_spec, validate
from clinlm.paths import model_dir, processed_dir, train_log_dir, work_dir


def make_run(run_name: str, params: dict[str, Any] | None = None) -> Run:
    """Build the ``Run`` for a ``runs.<name>`` entry of params.yaml; its method binds what it
    needs from params beyond its own sections (a stack: its member runs)."""
    from clinlm.methods import get_method

    params = params or load_params()
    task, task_cfg, model, model_cfg = run_spec(params, run_name)
    validate(params, library_models=[model])  # its bnb/lora/sft/training keys, before any work
    run = Run(task=task, task_type=task_cfg["type"], model=model, cfg=model_cfg,
              model_dir=model_dir(task, model), data_dir=processed_dir(task),
              seed=params["seed"], task_cfg=task_cfg, log_dir=train_log_dir(task, model),
              work_dir=work_dir(task, model))
    get_method(model_cfg["method"]).bind(run, params)
    return run
