"""``load_model``: the one way every LLM method gets its model, for training or for scoring.

    base (folder or hub id) --bnb/dtype--> model on this process's device
        --(quantized)--> prepare_model_for_kbit_training   (train AND predict: same layout)
        --train------->  new LoRA adapter (get_peft_model)
        --predict----->  saved adapter (PeftModel.from_pretrained) [--> merged, dequantized]

Kinds: ``causal`` (AutoModelForCausalLM: sft), ``seq_cls`` (AutoModelForSequenceClassification:
head), ``image_text`` (Idefics v1 or AutoModelForImageTextToText: vlm). Threads, dtype,
device placement and kbit preparation happen here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinlm.llm.builders import build_bnb_config, build_lora_config, is_quantized, resolve_dtype
from clinlm.llm.device import local_device, set_threads

KINDS = ("causal", "seq_cls", "image_text")


def image_text_family(base: str | Path) -> str:
    """``"idefics"`` for Idefics (v1) checkpoints, else ``"auto"`` (AutoModelForImageTextToText)."""
    from transformers import AutoConfig
    return "idefics" if AutoConfig.from_pretrained(str(base)).model_type == "idefics" else "auto"


def _model_class(kind: str, base: str):
    import transformers as T
    if kind == "causal":
        return T.AutoModelForCausalLM
    if kind == "seq_cls":
        return T.AutoModelForSequenceClassification
    if kind == "image_text":
        return (T.IdeficsForVisionText2Text if image_text_family(base) == "idefics"
                else T.AutoModelForImageTextToText)
    raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def load_model(cfg: dict[str, Any], kind: str, *, adapter: str | Path | None = None,
               lora: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
               gradient_checkpointing: bool = False, seed: int | None = None,
               **model_kwargs: Any) -> Any:
    """The model of a ``models.<m>`` entry (``cfg``), ready to train or to score.

    Args:
        cfg: the validated model section (``base``, ``dtype``, ``bnb``, ``torch_threads``,
            ``predict.merge_adapter``).
        kind: ``causal``, ``seq_cls`` or ``image_text``.
        adapter: a trained run's folder: load its LoRA adapter for scoring (merged into
            dequantized layers when ``predict.merge_adapter``). Mutually exclusive with ``lora``.
        lora: a ``LoraConfig`` section, or a function of the loaded model returning one (the
            head method names its new head module there): attach a new adapter for training.
        gradient_checkpointing: training only (kbit preparation enables it).
        seed: seeds torch before anything random is initialised (a new head, LoRA A).
        model_kwargs: passed to ``from_pretrained`` (e.g. ``num_labels`` for ``seq_cls``).
    """
    if adapter is not None and lora is not None:
        raise ValueError("load_model: pass adapter (to score) or lora (to train), not both")
    import torch

    from clinlm.llm.precision import resolve_cfg
    cfg = resolve_cfg(cfg)  # `auto` dtypes -> this machine's precision, once for all below
    set_threads(cfg.get("torch_threads"))
    if seed is not None:
        torch.manual_seed(seed)
    kw: dict[str, Any] = {"dtype": resolve_dtype(cfg.get("dtype")) or "auto", **model_kwargs}
    attn = attn_implementation(cfg.get("attn_implementation"))
    if attn is not None:
        kw.setdefault("attn_implementation", attn)
    quantized = is_quantized(cfg.get("bnb"))
    sharded = lora is not None and sharded_training(cfg.get("training") or {})
    # the residual stream's dtype (non_quantized_dtype): a 4-bit text model off FSDP / ZeRO-3
    stream = (non_quantized_dtype(cfg) if quantized and not sharded and kind != "image_text"
              else torch.float32)
    if quantized:
        kw["quantization_config"] = build_bnb_config(cfg["bnb"])
        if sharded:  # FSDP / ZeRO-3 shard the weights themselves: one dtype, no device map
            kw["dtype"] = _quant_storage(cfg["bnb"])
        else:
            kw["device_map"] = {"": local_device()}
    model = _model_class(kind, cfg["base"]).from_pretrained(str(cfg["base"]), **kw)
    model.config.use_cache = False
    if quantized and not sharded:
        _keep_4bit_compute_dtype(model, cfg["bnb"])
        # the same layout in training and scoring: non-quantized weights upcast to fp32
        # (then cast to the stream's dtype below when non_quantized_dtype asks for bf16)
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing and lora is not None)
        if stream != torch.float32:  # training and scoring alike: the same numerics
            if lora is not None:
                lora = lora(model) if callable(lora) else lora
            saved = lora if lora is not None else _adapter_config(adapter)
            _cast_non_quantized(model, stream, keep=saved.get("modules_to_save") or ())
    elif lora is None:
        model = model.to(local_device())  # training: the Trainer places the model
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    if lora is not None:
        from peft import get_peft_model
        return get_peft_model(model, build_lora_config(lora(model) if callable(lora) else lora))
    if adapter is None:
        return model.eval()
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, str(adapter))
    if cfg["predict"]["merge_adapter"]:
        # merged layers take a bf16 stream's dtype, as in training, with or without autocast
        model = merge_lora_dequantized(model, cfg.get("dtype") if stream == torch.float32
                                       else str(stream).removeprefix("torch."))
    return model.eval()


def attn_implementation(value: str | None, device: Any = None) -> str | None:
    """``attn_implementation`` for ``from_pretrained``: ``auto`` -> ``eager`` on a CPU, None
    (transformers' default, sdpa) elsewhere; other values unchanged.

    Why eager on CPUs: at these prompt lengths (100-250 tokens) the attention matrices are
    small, and sdpa's CPU flash kernel loses to two batched matmuls, most in bf16, whose
    flash backward took a fifth of a training step (BENCHMARKS.md, precision section)."""
    if value != "auto":
        return value
    import torch
    device = torch.device(device) if device is not None else local_device()
    return "eager" if device.type == "cpu" else None


def non_quantized_dtype(cfg: dict[str, Any]):  # -> torch.dtype
    """The dtype a 4-bit base's unquantized weights train in (``non_quantized_dtype``):
    ``auto`` -> the 4-bit compute dtype; null -> float32 (peft's upcast). ``cfg`` resolved."""
    import torch
    value = cfg.get("non_quantized_dtype")
    if value == "auto":
        value = (cfg.get("bnb") or {}).get("bnb_4bit_compute_dtype")
    return resolve_dtype(value) or torch.float32


def _adapter_config(adapter: str | Path | None) -> dict[str, Any]:
    """A saved adapter's ``adapter_config.json`` (empty without one)."""
    import json
    path = Path(adapter) / "adapter_config.json" if adapter is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _cast_non_quantized(model: Any, dtype: Any, keep: Any = ()) -> None:
    """Cast the weights bnb left unquantized (norms, embeddings) to ``dtype`` (the
    :func:`non_quantized_dtype`, not float32), undoing ``prepare_model_for_kbit_training``'s fp32 upcast
    when the compute dtype is bf16: the residual stream then stays bf16, and the 4-bit layers
    stop casting every input and output (~3x fp32's training tokens/s instead of 2x on a
    Zen 5 EPYC, BENCHMARKS.md). Scoring does the same (and merges LoRA into layers of the
    stream's dtype): a head fitted on bf16-stream states scores bf16-stream states.

    What the loss reads stays float32, as LLaMA-Factory's ``upcast_lmhead_output``: the output
    layer (``lm_head``, or a head trained in full, named in ``keep``) keeps fp32 weights and
    upcasts its input. bf16 logits would be rounded to 1/8 at |logit| 16-32, coarser than the
    Yes/No margins the answer loss learns from. An input embedding tied to a kept lm_head
    stays fp32 too and casts its output to the stream's dtype.
    """
    import torch
    names = set(keep)
    kept = [m for name, m in model.named_modules() if name.rpartition(".")[2] in names]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None:
        kept.append(out_emb)
    kept_params = {id(p) for m in kept for p in m.parameters()}
    for param in model.parameters():
        if (param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit"
                and id(param) not in kept_params):
            param.data = param.data.to(dtype)
    for module in kept:  # fp32 outputs computed from the bf16 stream
        module.register_forward_pre_hook(_cast_input_to_weight)
    in_emb = model.get_input_embeddings()
    if in_emb.weight.dtype != dtype:  # tied to the fp32 lm_head
        in_emb.register_forward_hook(lambda m, args, out: out.to(dtype))


def _cast_input_to_weight(module: Any, args: tuple) -> tuple:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if hasattr(a, "is_floating_point") and a.is_floating_point() else a
                 for a in args)


def sharded_training(training: dict[str, Any]) -> bool:
    """Whether ``training`` shards the model's weights (FSDP, or DeepSpeed ZeRO stage 3)."""
    if training.get("fsdp"):
        return True
    ds = training.get("deepspeed")
    if isinstance(ds, str):
        import json
        ds = json.loads(Path(ds).read_text())
    return bool(ds) and int((ds.get("zero_optimization") or {}).get("stage", 0)) == 3


def _quant_storage(bnb: dict[str, Any]) -> Any:
    """The dtype 4-bit weights are stored in when FSDP / ZeRO-3 shard them: it must be the
    compute dtype (FSDP shards floating-point tensors of one dtype per unit)."""
    storage = bnb.get("bnb_4bit_quant_storage")
    if storage in (None, "uint8"):
        raise ValueError("FSDP / DeepSpeed ZeRO-3 with a 4-bit base needs "
                         "bnb.bnb_4bit_quant_storage set to the compute dtype (e.g. bfloat16); "
                         "ZeRO-2 and DDP do not")
    return resolve_dtype(storage)


def _keep_4bit_compute_dtype(model: Any, bnb: dict[str, Any]) -> None:
    """Make bnb's 4-bit layers compute in ``bnb_4bit_compute_dtype`` on every CPU.

    On CPUs with AVX512-BF16, bitsandbytes' eval-mode forward repacks 4-bit weights for a
    bf16 kernel, whatever the compute dtype: results then differ from training's path and
    from other CPUs (docs/results.md, "Why the defaults are what they are"), and layers narrower than 32
    outputs fail. With a float32 compute dtype we keep its exact path everywhere; with
    bfloat16 (``auto`` on such a CPU) the bf16 kernel is the compute dtype's own path, so it
    stays, except on layers its packed layout cannot hold (out_features not a multiple of
    32, e.g. a 2-label head, or an odd in_features): those dequantize as in training.
    ``bnb`` must be resolved (no ``auto``: ``load_model`` resolves it first).
    """
    bf16 = str(bnb.get("bnb_4bit_compute_dtype") or "float32").removeprefix("torch.") == "bfloat16"
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            fits = module.out_features % 32 == 0 and module.in_features % 2 == 0
            module.support_avx512bf16_for_cpu = (module.support_avx512bf16_for_cpu
                                                 and bf16 and fits)


def merge_lora_dequantized(model: Any, dtype: str | None = "float32") -> Any:
    """Fold LoRA adapters into plain ``nn.Linear`` layers, for fast inference.

    A bitsandbytes 4-bit base layer is first dequantized (the exact weights its own forward
    uses), then ``B @ A * scaling`` is added in ``dtype``. The result computes what the
    quantized base + adapter computes, up to float rounding, without the per-call
    dequantization and the two extra LoRA matmuls (peft's own ``merge_and_unload`` would
    re-quantize the merged weight to 4 bits, which changes the model). Returns the
    underlying ``PreTrainedModel`` with no LoRA layers; ``modules_to_save`` wrappers (e.g. a
    trained head) stay and run their trained copy.
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
            data, state = weight.data, weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):
                # on AVX512-BF16 CPUs an eval-mode forward repacks the weight in place for
                # bnb's bf16 kernel; dequantizing that layout as-is would give garbage
                data, state = bnbf._convert_weight_packed_for_cpu_inverse(data, state)
            w = bnbf.dequantize_4bit(data, state).to(torch.float32)
        elif hasattr(weight, "SCB"):  # bnb 8-bit: leave it to peft
            raise ValueError(f"{name}: merging 8-bit layers is not supported; "
                             "set predict.merge_adapter: false")
        else:
            w = weight.data.to(torch.float32)
        for name_a in module.active_adapters:
            if name_a in module.lora_A:
                w = w + module.get_delta_weight(name_a).to(torch.float32)
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
