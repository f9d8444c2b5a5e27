"""Builders that turn params sections into library objects, and model/tokenizer loading.

``base`` in params is a local folder (the base_model stage's output, or any
``save_pretrained`` folder) or a Hugging Face Hub id; both go through ``from_pretrained``.
Imports of torch/transformers/peft happen inside functions: this module is imported by
methods that need them anyway, but keep ``clinlm`` light for the others.
"""

from __future__ import annotations

import os
from typing import Any


def device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (default: all cores). Matmuls on 2 cores want 2, not 1."""
    import torch
    torch.set_num_threads(n or os.cpu_count() or 1)


def resolve_dtype(name: str | None):  # -> torch.dtype | None
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None``/``"auto"`` -> None."""
    import torch
    if name in (None, "auto"):
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def build_bnb_config(section: dict[str, Any] | None):
    """``models.<m>.bnb`` -> ``BitsAndBytesConfig``, or None when neither 4- nor 8-bit is on."""
    if not section or not (section.get("load_in_4bit") or section.get("load_in_8bit")):
        return None
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(**section)


def build_lora_config(section: dict[str, Any]):
    """``models.<m>.lora`` -> ``peft.LoraConfig`` (keys are LoraConfig's own field names)."""
    from peft import LoraConfig
    return LoraConfig(**section)


def build_training_kwargs(training: dict[str, Any], output_dir: str, seed: int) -> dict[str, Any]:
    """Common TrainingArguments kwargs: params first, then the values the pipeline owns."""
    kw = dict(training)
    kw["output_dir"] = output_dir
    kw["seed"] = seed
    kw.setdefault("data_seed", seed)
    if device() == "cpu":
        kw["use_cpu"] = True
    return kw


def training_callbacks(training_kwargs: dict[str, Any], log_dir: str | None) -> list:
    """Route ``report_to: dvclive`` to a per-run folder (``metrics/<task>/train/<model>``).

    The stock integration writes every run to ./dvclive and needs a git commit; here each
    run gets its own folder, so parallel runs and ``dvc plots`` keep their curves apart.
    Mutates ``training_kwargs["report_to"]`` (dvclive removed, handled by the callback).
    """
    report = training_kwargs.get("report_to", "none")
    report = [report] if isinstance(report, str) else list(report)
    if "dvclive" not in report:
        return []
    # without a log_dir (benchmarks, learning curves) no curves at all: the stock
    # integration would write ./dvclive and ask for a git commit
    training_kwargs["report_to"] = [r for r in report if r != "dvclive"] or "none"
    if log_dir is None:
        return []
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return [DVCLiveCallback(live=Live(dir=log_dir, save_dvc_exp=False, dvcyaml=None))]


def load_tokenizer(base: str, padding_side: str = "left"):
    """Tokenizer with a pad token (falls back to EOS) and the given padding side."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def model_load_kwargs(bnb: dict[str, Any] | None, torch_dtype: str | None) -> dict[str, Any]:
    """``from_pretrained`` kwargs for the quantization and dtype settings of a model entry."""
    kw: dict[str, Any] = {"dtype": resolve_dtype(torch_dtype) or "auto"}
    qcfg = build_bnb_config(bnb)
    if qcfg is not None:
        kw["quantization_config"] = qcfg
        kw["device_map"] = {"": device() if device() == "cpu" else 0}
    return kw


def load_causal_lm(base: str, bnb: dict[str, Any] | None, torch_dtype: str | None):
    """A causal LM from a folder or hub id, 4-bit/8-bit when the bnb section asks for it."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(bnb, torch_dtype))


def merge_lora_dequantized(model: Any, dtype: str | None = "float32") -> Any:
    """Fold LoRA adapters into plain ``nn.Linear`` layers, for fast inference.

    A bitsandbytes 4-bit base layer is first dequantized (the exact weights its own forward
    uses), then ``B @ A * scaling`` is added in ``dtype``. The result computes what the
    quantized base + adapter computes, up to float rounding, without the per-call
    dequantization and the two extra LoRA matmuls (peft's own ``merge_and_unload`` would
    re-quantize the merged weight to 4 bits, which changes the model). Returns the
    underlying ``PreTrainedModel`` with no peft wrappers; non-LoRA modules are untouched.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    target = resolve_dtype(dtype) or torch.float32
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    replacements = []
    for name, module in causal.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        weight = base.weight
        if getattr(weight, "quant_state", None) is not None:  # bnb Params4bit
            import bitsandbytes.functional as bnbf
            w = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
        elif hasattr(weight, "SCB"):  # bnb 8-bit: leave it to peft
            raise ValueError(f"{name}: merging 8-bit layers is not supported; "
                             "set predict.merge_adapter: false")
        else:
            w = weight.data.to(torch.float32)
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                w = w + module.get_delta_weight(adapter).to(torch.float32)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=base.bias is not None,
                              device=w.device, dtype=target)
        with torch.no_grad():
            lin.weight.copy_(w.to(target))
            if base.bias is not None:
                lin.bias.copy_(base.bias.to(target))
        replacements.append((name, lin))
    for name, lin in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(causal.get_submodule(parent_name) if parent_name else causal, child, lin)
    return causal.eval()
