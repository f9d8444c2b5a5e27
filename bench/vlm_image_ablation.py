"""Does the vision-language model use the ECG picture? Score the test split again with the
pictures shuffled across subjects and with blank paper, and compare the MAE.

Run after a vlm run has trained and predicted, e.g. after
`dvc exp run -S '+runs.vlm.vascular-smolvlm={task: vascular_age, model: smolvlm-ecg, base: smolvlm-ecg}'`:

    python bench/vlm_image_ablation.py --task vascular_age --model smolvlm-ecg \
        --out bench/vlm_image_ablation.json

* ``real``: the run's own predictions CSV (each subject's picture);
* ``shuffled``: every subject gets another test subject's picture (seeded permutation): the
  pictures keep their statistics, the link to the subject is broken;
* ``blank``: a white page of the same size.
If the MAE barely moves, the model answers from the text alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clinlm.io import write_json  # noqa: E402
from clinlm.methods.interface import Run  # noqa: E402
from clinlm.methods.vlm import VLMMethod  # noqa: E402
from clinlm.params import load_params  # noqa: E402
from clinlm.paths import model_dir, predictions_path, processed_dir  # noqa: E402


def mae(pred: pd.DataFrame, truth: pd.Series) -> float:
    return float(np.mean(np.abs(pred["y_pred"].to_numpy(float) - truth.to_numpy(float))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="vascular_age")
    ap.add_argument("--model", default="smolvlm-ecg")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params()
    cfg, task_cfg = params["models"][args.model], params["tasks"][args.task]
    test = pd.read_parquet(processed_dir(args.task) / "test.parquet")
    real = pd.read_csv(predictions_path(args.task, args.model), dtype={"id": str})
    real = real.set_index("id").loc[test["id"].astype(str)].reset_index()
    run = Run(task=args.task, task_type=task_cfg["type"], model=args.model, cfg=cfg,
              model_dir=model_dir(args.task, args.model), data_dir=processed_dir(args.task),
              seed=params["seed"], task_cfg=task_cfg)
    images = Path(run.cfg["image"]["dir"] or ROOT / "data" / "interim" / args.task / "images")
    method = VLMMethod()
    scorer = method.load_scorer(run)
    results = {"real": mae(real, test["label"])}
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        ids = test["id"].astype(str).to_numpy()
        perm = np.random.default_rng(params["seed"]).permutation(len(ids))
        perm = np.where(perm == np.arange(len(ids)), np.roll(perm, 1), perm)  # no one keeps theirs
        for variant in ("shuffled", "blank"):
            folder = Path(tmp) / variant
            folder.mkdir()
            for i, sid in enumerate(ids):
                src = images / f"{ids[perm[i]]}.png"
                if variant == "shuffled":
                    (folder / f"{sid}.png").symlink_to(src)
                else:
                    with Image.open(images / f"{sid}.png") as im:
                        Image.new("RGB", im.size, "white").save(folder / f"{sid}.png")
            vcfg = {**run.cfg, "image": {**run.cfg["image"], "dir": str(folder)}}
            vrun = Run(**{**run.__dict__, "cfg": vcfg})
            pred = method.predict_with(scorer, vrun, test)
            results[variant] = mae(pred, test["label"])
            print(variant, results[variant], flush=True)
    out = {"task": args.task, "model": args.model, "n_test": len(test), "mae": results}
    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
