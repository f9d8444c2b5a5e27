"""One side of tests/test_cpu_repro.py, run in a subprocess under one CPU kernel set.

``python tests/cpu_repro_worker.py SPEC.json``; the spec names ``out`` (a folder), ``parts``
(``data`` and/or ``models``) and, for models, ``base`` (a tiny Llama folder). Writes
``out/report.json``: the kernel sets in use, the synthetic generators' file hashes, and the
predictions of the default CPU presets (params.yaml's ``smollm2-sft`` and ``smollm2-head``,
``auto`` precision, 4-bit) trained on 20 rows, with the precision each run recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def kernels() -> dict:
    """The numpy dispatch targets and (when imported) torch's ATen capability in use."""
    from numpy._core import _multiarray_umath as m
    out = {"numpy": [f for f in m.__cpu_dispatch__ if m.__cpu_features__.get(f)]}
    if "torch" in sys.modules:
        out["aten"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return out


def data_hashes(out: Path) -> dict[str, str]:
    """md5 of every file the synthetic generators write (small cohorts, default settings)."""
    from clinlm.params import load_params
    from clinlm.tasks import download
    params = load_params()
    hashes = {}
    for task, n in (("noshow", 300), ("vascular_age", 40)):
        cfg = dict(params["tasks"][task])
        cfg["download"] = {**cfg["download"], "source": "synthetic", "n_synthetic": n}
        download(task, cfg, params["seed"], out / task)
        for f in sorted((out / task).iterdir()):
            hashes[f"{task}/{f.name}"] = hashlib.md5(f.read_bytes()).hexdigest()
    return hashes


def model_predictions(base: str, out: Path) -> dict:
    """Train + predict the default CPU presets on the tiny base (20 rows each)."""
    import numpy as np
    import pandas as pd

    from clinlm.methods import get_method
    from clinlm.methods.interface import Run
    from clinlm.params import load_params
    params = load_params()
    rng = np.random.default_rng(0)
    wait, age = rng.integers(0, 40, 40), rng.uniform(30, 80, 40)
    rows = pd.DataFrame({"id": [str(i) for i in range(40)],
                         "statement": [f"Booked {w} days ahead, aged {a:.0f}."
                                       for w, a in zip(wait, age, strict=True)]})
    labels = {"noshow": np.where(wait > 20, "Yes", "No"), "vascular_age": age.round(1)}
    report = {}
    for task, model in (("noshow", "smollm2-sft"), ("vascular_age", "smollm2-head")):
        cfg = dict(params["models"][model])
        cfg.update(base=base, max_train_rows=None, torch_threads=1)
        cfg["training"] = {**cfg["training"], "report_to": "none", "logging_steps": 1}
        tcfg = params["tasks"][task]
        run = Run(task, tcfg["type"], model, cfg, out / task / model, out, seed=params["seed"],
                  task_cfg={k: v for k, v in tcfg.items() if k in ("prompt", "answer")})
        df = rows.assign(label=labels[task])
        method = get_method(cfg["method"])
        info = method.train(run, df.iloc[:20])
        (run.model_dir / "train_info.json").write_text(json.dumps(info))  # as stages/train
        pred = get_method(cfg["method"]).predict(run, df.iloc[20:])
        col = "p_yes" if tcfg["type"] == "classification" else "y_pred"
        report[f"{task}/{model}"] = {"pred": pred[col].astype(float).tolist(),
                                     "precision": info["precision"],
                                     "last_loss": info["last_loss"]}
    return report


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    report = {}
    if "data" in spec["parts"]:
        report["data"] = data_hashes(out / "data")
    if "models" in spec["parts"]:
        report["models"] = model_predictions(spec["base"], out / "models")
    report["kernels"] = kernels()
    (out / "report.json").write_text(json.dumps(report, indent=1))
