"""Builders that turn a params section into a library object (like TRL's / peft's own).

Each builder takes the section as params.yaml spells it (keys are the library's field names,
checked by ``clinlm.params``) and returns the library object; nothing else is added here
except the few values the project owns (output dir, seed, CPU flag).
"""

from __future__ import annotations

import os
from typing import Any

from clinlm.llm.device import device


def resolve_dtype(name: str | None):  # -> torch.dtype | None
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` -> this machine's precision
    (:func:`clinlm.llm.precision.resolve_precision`); ``None`` -> None (the caller's default)."""
    import torch
    if name is None:
        return None
    if name == "auto":
        from clinlm.llm.precision import resolve_precision
        name = resolve_precision()
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def is_quantized(bnb: dict[str, Any] | None) -> bool:
    """Whether a ``bnb`` section asks for a 4- or 8-bit base."""
    return bool(bnb and (bnb.get("load_in_4bit") or bnb.get("load_in_8bit")))


def build_bnb_config(section: dict[str, Any] | None):
    """``models.<m>.bnb`` -> ``BitsAndBytesConfig``, or None when neither 4- nor 8-bit is on."""
    if not is_quantized(section):
        return None
    from transformers import BitsAndBytesConfig

    from clinlm.llm.precision import resolve_value
    section = {k: resolve_value("bnb", k, v) if k == "bnb_4bit_compute_dtype" else v
               for k, v in section.items()}
    return BitsAndBytesConfig(**section)


def build_lora_config(section: dict[str, Any]):
    """``models.<m>.lora`` -> ``peft.LoraConfig`` (keys are LoraConfig's own field names)."""
    from peft import LoraConfig
    return LoraConfig(**section)


def build_training_kwargs(training: dict[str, Any], output_dir: str, seed: int) -> dict[str, Any]:
    """``TrainingArguments`` kwargs: the params section, then the values the project owns.

    ``bf16: auto`` becomes True where bf16 is fast on this process's device
    (:mod:`clinlm.llm.precision`), else False. ``output_dir`` and ``seed`` are the project's
    (an error names the key, :data:`clinlm.params.PROJECT_OWNED`). Every run trains LoRA
    adapters, whose parameters all take part in each step: under DDP
    ``ddp_find_unused_parameters`` is false unless params set it (the Trainer's default for a
    peft model, true, costs an extra graph traversal per step)."""
    from clinlm.llm.precision import resolve_value
    from clinlm.params import PROJECT_OWNED
    for key in ("output_dir", "seed"):
        if key in training:
            raise ValueError(f"training.{key}: {PROJECT_OWNED['training', key]}")
    kw = dict(training)
    kw.setdefault("ddp_find_unused_parameters", False)
    if "bf16" in kw:
        kw["bf16"] = resolve_value("training", "bf16", kw["bf16"])
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
    Only the main process logs (``RANK`` 0). Mutates ``training_kwargs["report_to"]``.
    """
    report = training_kwargs.get("report_to", "none")
    report = [report] if isinstance(report, str) else list(report)
    if "dvclive" not in report:
        return []
    training_kwargs["report_to"] = [r for r in report if r != "dvclive"] or "none"
    # without a log_dir (benchmarks, learning curves) no curves at all
    if log_dir is None or int(os.environ.get("RANK", 0)) != 0:
        return []
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class CurvesCallback(DVCLiveCallback):
        """The Trainer's logs without its wall-clock figures (``train_runtime``,
        ``*_per_second``): the curves are committed, and must not change with the clock.

        The x-axis is the optimizer step (``state.global_step``), so training loss and
        validation curves logged at the same step line up. A run resumed from a checkpoint
        first replays the checkpoint's log history: its curves equal an uninterrupted run's."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            super().on_train_begin(args, state, control, model=model, **kwargs)
            if state.global_step > 0 and state.is_world_process_zero:  # resumed
                for logs in state.log_history:
                    self._log(state, logs, int(logs.get("step", 0)))

        def _log(self, state, logs: dict, step: int) -> None:
            from dvclive.plots import Metric
            from dvclive.utils import standardize_metric_name
            self.live.step = step
            for key, value in logs.items():
                if key == "step" or key.endswith(("_runtime", "_per_second")):
                    continue
                if Metric.could_log(value):
                    self.live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
            self.live.next_step()

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero:
                self._log(state, dict(logs or {}), state.global_step)

    return [CurvesCallback(live=Live(dir=log_dir, save_dvc_exp=False, dvcyaml=None))]
