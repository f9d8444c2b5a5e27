"""``predict.engine: vllm`` -- the causal-LM methods' classification scoring on vLLM (GPU).

vLLM serves the weights the HF scorer scores with: the LoRA adapter folded into the
dequantized base (:func:`clinlm.llm.load.merge_lora_dequantized`), exported once per trained
adapter to ``<run.work_dir>/vllm-merged`` (not a DVC output; rebuilt when the adapter
changes). Each prompt gets ONE generated token, restricted to the answers' first tokens
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

log = logging.getLogger(__name__)


def _fingerprint(model_dir: Path, cfg: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"base": cfg["base"], "bnb": cfg["bnb"], "dtype": cfg["dtype"]},
                                  sort_keys=True).encode())
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        path = model_dir / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def export_merged(model_dir: Path, cfg: dict[str, Any], out: Path) -> Path:
    """The adapter folded into the dequantized base, saved as a plain HF folder (once)."""
    from clinlm.io import atomic_dir
    from clinlm.llm.load import load_model, load_tokenizer

    stamp = out / "fingerprint.txt"
    key = _fingerprint(model_dir, cfg)
    if stamp.exists() and stamp.read_text() == key:
        return out
    model = load_model({**cfg, "predict": {**cfg["predict"], "merge_adapter": True}}, "causal",
                       adapter=model_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(model_dir).save_pretrained(tmp)
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
