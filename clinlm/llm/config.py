"""The params keys every LLM method (sft, head, vlm) shares: read by the engine, defaults here."""

from __future__ import annotations

from typing import Any

from pydantic import PositiveInt

from clinlm.config import ModelCommon, Strict


class PredictConfig(Strict):
    """How an LLM method scores rows (``models.<m>.predict``)."""

    batch_size: PositiveInt = 32
    max_length: PositiveInt = 256      # prompt tokens kept (head: left truncation)
    # autocast while scoring; null = the training precision (training.bf16 / fp16), else none
    autocast_dtype: str | None = None
    merge_adapter: bool = True         # fold LoRA into dequantized linear layers (same outputs)
    prefix_cache: bool = True          # run the prompt prefix all rows share once (sft)


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
