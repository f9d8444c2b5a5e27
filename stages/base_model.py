"""Stage base_model: materialize each ``base_models`` entry as a Hugging Face folder."""

import argparse

from clinlm.base_model import materialize
from clinlm.params import load_params
from clinlm.paths import ROOT, setup_logging

if __name__ == "__main__":
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True, help="key under base_models in params.yaml")
    args = ap.parse_args()
    spec = load_params()["base_models"][args.name]
    print(materialize(spec["source"], ROOT / "data" / "models" / "base" / args.name,
                      dtype=spec.get("dtype", "float32"), revision=spec.get("revision"),
                      allow_patterns=spec.get("allow_patterns"),
                      ignore_patterns=spec.get("ignore_patterns"),
                      key=f"base_models.{args.name}"))
