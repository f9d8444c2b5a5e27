"""The params keys every LLM method (sft, head, vlm) shares: read by the engine, defaults here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveInt

from clinlm.config import ModelCommon, Strict


class PredictConfig(Strict):
    """How an LLM method scores rows (``models.<m>.predict``)."""

    batch_size: PositiveInt = 32
    max_length: PositiveInt = 256      # prompt tokens kept (head: left truncation)
    # autocast while scoring; null = the training precision (training.bf16 / fp16), else none
    autocast_dtype: str | None = None
    merge_adapter: bool = True         # fold LoRA into dequantized linear layers (same outputs)
    prefix_cache: bool = True          # run the prompt prefix all rows share once (sft)
    engine: Literal["hf", "vllm"] = "hf"  # vllm: sft classification on GPUs (clinlm.llm.vllm_engine)
    vllm: dict[str, Any] = {}          # vllm.LLM arguments, e.g. tensor_parallel_size, max_model_len


class LaunchConfig(Strict):
    """Process layout of a run (``clinlm.launch``): more than one process re-executes the
    train/predict stage under torchrun; DeepSpeed / FSDP go through ``training.deepspeed``,
    ``training.fsdp`` and ``training.fsdp_config`` (TrainingArguments' own fields)."""

    num_processes: PositiveInt = 1          # processes (GPUs) per machine
    num_machines: PositiveInt = 1
    machine_rank: NonNegativeInt = 0        # this machine's index (0 = the main one)
    main_process_ip: str | None = None      # the main machine's address (null = 127.0.0.1)
    main_process_port: PositiveInt = 29500


class LLMConfig(ModelCommon):
    """Keys every LLM method (sft, head, vlm) shares; the engine (``clinlm.llm``) reads them."""

    base: str
    dtype: str | None = None           # load dtype of the base (and of merged weights); null = auto
    max_train_rows: PositiveInt | None = None
    torch_threads: PositiveInt | None = None
    bnb: dict[str, Any] | None = None  # transformers.BitsAndBytesConfig fields
    lora: dict[str, Any]               # peft.LoraConfig fields
    training: dict[str, Any] = {}      # transformers.TrainingArguments fields
    predict: PredictConfig = PredictConfig()
    launch: LaunchConfig = LaunchConfig()
