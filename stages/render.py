"""Stage render: each recording of a task with ECG signals -> one PNG on ECG paper."""

import argparse

from clinlm.io import write_json
from clinlm.params import load_params
from clinlm.paths import interim_dir, raw_dir, setup_logging
from clinlm.vascular.task import render_images

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", default="vascular_age")
    args = ap.parse_args()
    size = load_params()["tasks"][args.task]["images"]
    out = interim_dir(args.task) / "images"
    info = render_images(raw_dir(args.task), out, size["width_px"], size["height_px"])
    write_json(interim_dir(args.task) / "images.json", info)
    print(info)
