"""``predict.engine: vllm`` -- the causal-LM methods' classification scoring on vLLM (GPU).

vLLM serves the weights the HF scorer scores with: the LoRA adapter folded into the
dequantized base (:func:`clinlm.llm.load.merge_lora_dequantized`), exported once per trained
adapter to ``<run.work_dir>/vllm-merged`` (not a DVC output; rebuilt when the adapter
changes) as a plain HF folder (:func:`export_merged`, shared with ``python -m clinlm export``:
every 4-bit layer dequantized, no ``quantization_config``, no peft files). Each prompt gets ONE generated token, restricted to the answers' first tokens
(``allowed_token_ids``), and the answers' log-probabilities are read after that restriction
(``logprobs_mode="processed_logprobs"``), so ``P(Yes)`` is renormalised over Yes/No exactly
as the HF scorer does it. Tensor parallelism and every other ``vllm.LLM`` argument come
from ``predict.vllm``; data parallelism from ``launch`` (each process its own engine and share
of rows). Numeric answers (ages) stay on the HF path: the exact digit-tree distribution
needs logits after every digit prefix, which vLLM's sampling API does not return.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from clinlm.llm.builders import resolve_dtype

log = logging.getLogger(__name__)


def _fingerprint(model_dir: Path, cfg: dict[str, Any], kind: str = "causal") -> str:
    h = hashlib.sha256(json.dumps({"base": cfg["base"], "bnb": cfg["bnb"], "dtype": cfg["dtype"]},
                                  sort_keys=True).encode())
    if kind != "causal":  # the vLLM folders exported before `kind` existed keep their key
        h.update(kind.encode())
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        path = model_dir / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def plain_model(model: Any, dtype: str | None) -> Any:
    """A merged model as a plain ``PreTrainedModel`` any HF loader reads (vLLM, TGI, llama.cpp).

    :func:`~clinlm.llm.load.merge_lora_dequantized` folds only the LoRA layers; here the
    4-bit layers LoRA did not target are dequantized too (transformers' own
    ``model.dequantize``), the ``quantization_config`` is dropped (else a loader would read
    the float weights as bitsandbytes ones), peft's ``modules_to_save`` wrappers (a trained
    head) are replaced by their trained copy, everything is cast to the run's ``dtype`` and
    the KV cache (off for training) is switched back on.
    """
    import torch
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            model.set_submodule(name, module.modules_to_save[module.active_adapters[0]])
    target = resolve_dtype(dtype) or torch.float32
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters()):
            model = model.dequantize(dtype=target)  # also removes the quantization config
        else:  # transformers' dequantize fails when no quantized layer is left
            quantizer.remove_quantization_config(model)
    model = model.to(target)
    model.config.dtype = target
    model.config.use_cache = True
    left = [n for n, p in model.named_parameters()
            if "lora_" in n or type(p).__name__ in ("Params4bit", "Int8Params")]
    if left:
        raise RuntimeError(f"merged model still has adapter or quantized weights: {left[:3]}")
    return model.eval()


def export_merged(model_dir: Path, cfg: dict[str, Any], out: Path, kind: str = "causal",
                  extra_files: dict[str, str] | None = None, **model_kwargs: Any) -> Path:
    """The adapter folded into the dequantized base, saved as a plain HF folder (once).

    ``kind`` and ``model_kwargs`` as in :func:`clinlm.llm.load.load_model` (``seq_cls`` and
    its ``num_labels``... for the head method); ``extra_files`` (name -> text) are written
    beside the weights. Written atomically; an existing ``out`` made from the same adapter,
    base and settings (``fingerprint.txt``) is kept as is.
    """
    from clinlm.io import atomic_dir
    from clinlm.llm.load import load_model
    from clinlm.llm.precision import resolve_cfg
    from clinlm.llm.tokenizer import load_tokenizer

    cfg = resolve_cfg(cfg)  # `auto` -> this machine's dtype (and in the fingerprint)
    stamp = out / "fingerprint.txt"
    key = _fingerprint(model_dir, cfg, kind)
    if stamp.exists() and stamp.read_text() == key:
        return out
    model = load_model({**cfg, "predict": {**cfg["predict"], "merge_adapter": True}}, kind,
                       adapter=model_dir, **model_kwargs)
    model = plain_model(model, cfg["dtype"])
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(model_dir).save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / "fingerprint.txt").write_text(key)
    del model
    return out


def choice_probs(model_dir: Path, cfg: dict[str, Any], work_dir: Path, prompts: list[str],
                 choice_ids: list[int]) -> np.ndarray:
    """P(choice) renormalised over the choices' first tokens, ``(n, k)``, from vLLM."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise RuntimeError("predict.engine: vllm needs the vllm package and a CUDA GPU "
                           "(pip install vllm); use engine: hf on this machine") from e
    from clinlm.llm.precision import resolve_cfg

    cfg = resolve_cfg(cfg)
    merged = export_merged(Path(model_dir), cfg, Path(work_dir) / "vllm-merged")
    llm = LLM(model=str(merged), dtype=cfg["dtype"] or "auto", seed=0,
              logprobs_mode="processed_logprobs", **(cfg["predict"]["vllm"] or {}))
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=choice_ids,
                            logprobs=len(choice_ids))
    outs = llm.generate(prompts, params)
    logp = np.full((len(prompts), len(choice_ids)), -np.inf)
    for i, out in enumerate(outs):
        top = out.outputs[0].logprobs[0]  # {token id: Logprob} of the one generated token
        for j, t in enumerate(choice_ids):
            if t in top:
                logp[i, j] = top[t].logprob
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)
