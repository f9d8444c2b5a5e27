"""Stage evaluate: predictions CSV -> metrics/<task>/<model>.json + plot data. No model import."""

import argparse

import pandas as pd

from clinlm.io import write_json
from clinlm.metrics import classification_metrics, multiclass_metrics, regression_metrics
from clinlm.params import load_params, run_spec
from clinlm.paths import (
    metrics_path,
    model_dir,
    plots_dir,
    predictions_path,
    processed_dir,
    read_json,
    setup_logging,
)

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    # positional: torchrun (the multi-process relaunch) reads `--run` as its own `--run-path`
    ap.add_argument("run", help="a run name from runs.<method> in params.yaml")
    args = ap.parse_args()
    params = load_params()
    task, task_cfg, model, model_cfg = run_spec(params, args.run)
    pred = pd.read_csv(predictions_path(task, model), dtype={"id": str})
    split = read_json(processed_dir(task) / "split.json")
    trained = read_json(model_dir(task, model) / "train_info.json")
    if task_cfg["type"] == "classification":
        m, plots = classification_metrics(pred)
    elif task_cfg["type"] == "multiclass":
        m, plots = multiclass_metrics(pred)
    else:
        m, plots = regression_metrics(pred, train_mean=split["train_mean"])
        if "noise_floor_mae" in split:
            m["noise_floor_mae"] = split["noise_floor_mae"]
    m.update({"task": task, "model": model, "method": model_cfg["method"],
              "base": model_cfg.get("base", model_cfg.get("base_model")),
              "n_train": trained.get("n_train"),  # no timings: metrics must not change with the clock
              "data_source": split["data_source"],
              "group_by_patient": split.get("group_by_patient")})
    # vlm: which weights were pretrained; LLMs: the precision used, a regression loss that rose
    for key in ("pretrained_parts", "random_init_parts", "precision", "loss_rose"):
        if key in trained:
            m[key] = trained[key]
    write_json(metrics_path(task, model), m)
    for name, frame in plots.items():
        write_json(plots_dir(task, model) / f"{name}.json",
                   [{**row, "model": model} for row in frame.to_dict(orient="records")])
    print({k: v for k, v in m.items() if not isinstance(v, dict)})
