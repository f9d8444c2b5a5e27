"""Stage vlm_base: compose a vision-language base (vlm_bases.<name>) around a pretrained text model."""

import argparse

from clinlm.params import load_params
from clinlm.paths import ROOT, setup_logging
from clinlm.vlm_base import compose_idefics3

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True, help="key under vlm_bases in params.yaml")
    args = ap.parse_args()
    params = load_params()
    spec = params["vlm_bases"][args.name]
    if spec.get("architecture", "idefics3") != "idefics3":
        raise SystemExit(f"vlm_bases.{args.name}.architecture: only idefics3 can be composed")
    base = ROOT / "data" / "models" / "base"
    print(compose_idefics3(base / spec["text_model"], base / args.name, spec["vision_config"],
                           scale_factor=spec.get("scale_factor", 4), seed=params["seed"],
                           dtype=spec.get("dtype", "float32")))
