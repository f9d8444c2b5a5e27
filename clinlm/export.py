"""``python -m clinlm export --run <run> --output <dir>``: a trained run as a plain HF model folder.

The run's LoRA adapter is folded into the dequantized base and saved as a standard Hugging
Face folder -- ``config.json`` (no ``quantization_config``), ``model.safetensors``, the
tokenizer with its chat template, ``generation_config.json`` -- that vLLM, TGI, llama.cpp's
``convert_hf_to_gguf.py`` or a plain ``AutoModelFor*.from_pretrained(dir)`` load without peft
or bitsandbytes. The weights are the ones the pipeline's scorer computes with (the code is
the vLLM engine's, :func:`clinlm.llm.vllm_engine.export_merged`; ``tests/test_export.py``
checks the answers match the adapter path).

* ``sft`` runs -> ``AutoModelForCausalLM`` (answers read as the pipeline reads them:
  P(Yes) from the next token after the chat prompt; ages digit by digit);
* ``head`` runs -> ``AutoModelForSequenceClassification`` with the trained head
  (``id2label`` No/Yes, or the classes of a multiclass run; a regression head outputs the
  standardised target: ``head.json``,
  copied beside the weights, holds the mean/std to undo it).

A command, not a DVC stage: an export is a derived artifact on demand (a few GB for an 8B
model) that nothing in the pipeline reads. Written atomically (a temp folder renamed at the
end); an existing export of the same adapter is kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from clinlm.methods.interface import Run

log = logging.getLogger(__name__)

def export_kind(run: Run) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(load_model kind, from_pretrained kwargs, extra files) of a trained run's export: its
    method's :meth:`~clinlm.methods.interface.Method.export_spec`, for an ``exportable`` method."""
    from clinlm.methods import get_method, method_class, method_names

    method = get_method(run.cfg["method"])
    if not method.exportable:
        ok = [m for m in method_names() if method_class(m).exportable]
        raise ValueError(f"{run.model}: method {method.name!r} has no merged export "
                         f"(exportable: {', '.join(ok)})")
    return method.export_spec(run)


def check_trained(run: Run) -> None:
    """Stop with the command to run when the run's model folder holds no trained model."""
    if not run.model_dir.is_dir() or not any(run.model_dir.iterdir()):
        raise FileNotFoundError(
            f"{run.model_dir}: no trained model for {run.task}/{run.model}; train it first "
            f"(dvc repro train_{run.cfg['method']}@<run>)")


def export_run(run: Run, out: str | Path) -> Path:
    """Write the merged, dequantized model of a trained ``sft``/``head`` run to ``out``."""
    from clinlm.llm.vllm_engine import export_merged

    check_trained(run)
    if not (run.model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{run.model_dir}/adapter_config.json: not a LoRA model folder")
    kind, kwargs, extra = export_kind(run)
    return export_merged(run.model_dir, run.cfg, Path(out), kind, extra_files=extra, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """CLI (see module docstring); returns the exit code."""
    from clinlm.params import load_params
    from clinlm.paths import setup_logging
    from clinlm.runs import make_run

    ap = argparse.ArgumentParser(prog="python -m clinlm export",
                                 description="Export a trained run as a merged HF model folder.")
    ap.add_argument("--run", required=True, help="a runs.<method>.<name> entry of params.yaml")
    ap.add_argument("--output", required=True, type=Path, help="folder to write (atomically)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        run = make_run(args.run, load_params(args.params))
        out = export_run(run, args.output)
    except (OSError, ValueError, KeyError) as e:  # ParamsError is a ValueError
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {run.task}/{run.model} to {out}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
