"""The params keys every LLM method (sft, head, vlm) shares: read by the engine, defaults here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt, field_validator

from clinlm.config import ModelCommon, Strict

# the dtype names a model's `dtype` / `predict.autocast_dtype` take (torch attribute names);
# `auto`: this machine's precision (clinlm.llm.precision: bf16 where it is fast, else fp32)
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def _dtype_name(value: str | None) -> str | None:
    if value is not None and value not in DTYPES:
        raise ValueError(f"{value!r} is not a dtype; use one of {', '.join(DTYPES)} or null")
    return value


class PredictConfig(Strict):
    """How an LLM method scores rows (``models.<m>.predict``)."""

    batch_size: PositiveInt = 32       # rows scored per forward pass
    max_length: PositiveInt = 256      # prompt tokens kept (head: left truncation)
    # autocast while scoring; null = the training precision (training.bf16 / fp16), else none;
    # auto = bf16 where this machine computes it fast (clinlm.llm.precision), else none
    autocast_dtype: str | None = None
    merge_adapter: bool = True         # fold LoRA into dequantized linear layers (same outputs)
    prefix_cache: bool = True          # run the prompt prefix all rows share once (sft)
    engine: Literal["hf", "vllm"] = "hf"  # vllm: sft classification on GPUs (clinlm.llm.vllm_engine)
    vllm: dict[str, Any] = {}          # vllm.LLM arguments, e.g. tensor_parallel_size, max_model_len

    _check_dtype = field_validator("autocast_dtype")(_dtype_name)


class LaunchConfig(Strict):
    """Process layout of a run (``clinlm.launch``): more than one process re-executes the
    train/predict stage under torchrun; DeepSpeed / FSDP go through ``training.deepspeed``,
    ``training.fsdp`` and ``training.fsdp_config`` (TrainingArguments' own fields)."""

    num_processes: PositiveInt = 1          # processes (GPUs) per machine
    num_machines: PositiveInt = 1           # machines (nodes) of a multi-node run
    machine_rank: NonNegativeInt = 0        # this machine's index (0 = the main one)
    main_process_ip: str | None = None      # the main machine's address (null = 127.0.0.1)
    main_process_port: PositiveInt = 29500  # the rendezvous port on the main machine


class ValidationConfig(Strict):
    """A validation slice held out of the TRAINING split (``models.<m>.validation``), scored
    while training (:mod:`clinlm.llm.validation`); the test split is never touched."""

    # rows held out of training: a count (>= 1) or a share of the training split (< 1),
    # drawn seeded and grouped like the split (tasks.<task>.split.group_by_patient);
    # null or 0: none, and then every evaluation key of `training` is an error
    rows: NonNegativeInt | NonNegativeFloat | None = None
    # stop after this many evaluations without an improvement of
    # training.metric_for_best_model (transformers' EarlyStoppingCallback); null: never
    early_stopping_patience: PositiveInt | None = None
    early_stopping_threshold: NonNegativeFloat = 0.0  # the least change that counts as one

    @field_validator("rows")
    @classmethod
    def _rows(cls, value: float | None) -> float | None:
        if isinstance(value, float) and value >= 1:
            raise ValueError(f"{value!r}: a share of the training rows is < 1; a row count is "
                             f"an integer")
        return value


class LLMConfig(ModelCommon):
    """Keys every LLM method (sft, head, vlm) shares; the engine (``clinlm.llm``) reads them."""

    base: str  # the base folder it loads, data/models/base/<base_models entry>
    # load dtype of the base (and of merged weights); null = the checkpoint's; auto = bf16
    # where this machine computes it fast, else float32 (clinlm.llm.precision)
    dtype: str | None = None
    # the attention kernel (from_pretrained's attn_implementation): null = transformers'
    # default (sdpa); auto = eager on CPUs (short prompts: faster than sdpa's flash kernel,
    # whose bf16 backward is slow), the default elsewhere; or eager / sdpa / flash_attention_2
    attn_implementation: str | None = None
    # a 4-bit base: the dtype of the weights bnb leaves unquantized (norms, embeddings),
    # hence of the residual stream in training and scoring. float32 = peft's
    # prepare_model_for_kbit_training upcast; auto = the 4-bit compute dtype (a bf16 stream
    # where bf16 is fast, as LLaMA-Factory's upcast_layernorm: false); null = float32
    non_quantized_dtype: str | None = None
    max_train_rows: PositiveInt | None = None  # a seeded, stratified subsample; null = all
    torch_threads: PositiveInt | None = None   # null = every core in the process's affinity
    bnb: dict[str, Any] | None = None  # transformers.BitsAndBytesConfig fields
    lora: dict[str, Any]               # peft.LoraConfig fields
    training: dict[str, Any] = {}      # transformers.TrainingArguments fields
    # accelerate.utils.TorchDynamoPlugin fields, read when training.torch_compile is on,
    # e.g. use_regional_compilation (compile one decoder layer, reuse it for all), dynamic
    dynamo: dict[str, Any] = {}
    predict: PredictConfig = PredictConfig()           # how rows are scored (its section)
    launch: LaunchConfig = LaunchConfig()              # processes / machines (its section)
    validation: ValidationConfig = ValidationConfig()  # scored while training (its section)

    _check_dtype = field_validator("dtype", "non_quantized_dtype")(_dtype_name)
