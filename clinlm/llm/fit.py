"""``fit``: the one training loop of every LLM method (sft, head, vlm).

A method builds its model (``clinlm.llm.load.load_model``) and its dataset, and gives a
``loss_fn(model, inputs) -> (summed loss, item count)``; ``fit`` does the rest the same way
for all: TrainingArguments (or TRL's SFTConfig) from params, dvclive curves, the adapter
dtype, the loss normalisation, saving (main process only) and ``train_info``.

Loss normalisation: the summed loss is divided by the number of loss items of the whole
optimizer step (``num_items_in_batch``: answer tokens for sft/vlm, rows for head), counted
by the Trainer over the gradient-accumulation micro-batches and, with
``average_tokens_across_devices``, over all processes. So 1 process x batch 2b, 2 processes
x batch b and 1 process x batch b x 2 accumulation steps compute the same update.

Checkpoints and resuming: checkpoints (``training.save_strategy`` / ``save_steps`` /
``save_total_limit``, TrainingArguments' own) go to ``<run.work_dir>/checkpoints``
(``data/work/<task>/<model>/checkpoints``), outside the DVC outputs, which DVC deletes before a
stage runs. A killed run's next ``dvc repro`` resumes from the last complete checkpoint when
the run is the same (params, seed, training rows, precision, process count: the fingerprint in
``checkpoints/run.json``); it then trains exactly as an uninterrupted run (weights, optimizer,
scheduler, RNG, data order, and the loss accounting and curves, restored here). The folder is
removed once the model is saved. ``training.resume_from_checkpoint``: null (that automatic
resume), false (start over), true (the last checkpoint even if the run changed), or a path.

Validation: see :mod:`clinlm.llm.validation` (``eval_dataset`` + ``validate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinlm.launch import gather_object
from clinlm.llm.builders import build_training_kwargs, is_quantized, resolve_dtype, training_callbacks
from clinlm.llm.compile import (
    COMPILE_KEYS,
    compile_repeated_blocks,
    planned_tokens,
    resolve_compile,
)

log = logging.getLogger(__name__)

LossFn = Callable[[Any, dict[str, Any]], tuple[Any, int]]


def _trainer_class(sft: bool):
    """``Trainer`` (or TRL's ``SFTTrainer``) whose loss is the method's ``loss_fn``."""
    from transformers import Trainer
    base = Trainer
    if sft:
        from trl import SFTTrainer
        base = SFTTrainer

    class EngineTrainer(base):
        loss_is_scaled_for_ga = True  # compute_loss already divides by the step's item count

        def __init__(self, *args: Any, loss_fn: LossFn, dynamo: dict[str, Any] | None = None,
                     validate: Callable[[Any], dict[str, float]] | None = None,
                     eval_data_collator: Any = None, **kwargs: Any) -> None:
            self.loss_fn = loss_fn
            self.dynamo = dict(dynamo or {})
            self.validate = validate
            self.eval_data_collator = eval_data_collator
            super().__init__(*args, **kwargs)

        def get_eval_dataloader(self, eval_dataset=None):
            # the validation rows without training-time augmentation (vlm), and without
            # drawing from the training collator's random state
            if self.eval_data_collator is None:
                return super().get_eval_dataloader(eval_dataset)
            train_collator, self.data_collator = self.data_collator, self.eval_data_collator
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = train_collator

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            # eval_loss: the training loss_fn on the validation batch (mean per item); the
            # metrics come from the method's own scoring in evaluation_loop
            import torch
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                total, n = self.loss_fn(model, inputs)
            loss = total.detach() / max(n, 1)
            return loss, None, None

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None,
                            ignore_keys=None, metric_key_prefix="eval"):
            output = super().evaluation_loop(dataloader, description, True, ignore_keys,
                                             metric_key_prefix)
            if self.validate is not None:
                was_training = self.model.training
                try:
                    metrics = self.validate(self.model)
                finally:
                    self.model.train(was_training)
                output.metrics.update({f"{metric_key_prefix}_{k}": float(v)
                                       for k, v in metrics.items()})
            return output

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # the Trainer reloads a peft adapter with load_adapter, which upcasts bf16 adapters
            # to float32 (peft's autocast_adapter_dtype): give the trainable parameters their
            # dtype back before the optimizer state is loaded onto them, so a resumed QLoRA run
            # trains in the precision of an uninterrupted one
            target = self.model if model is None else model
            dtypes = {n: p.dtype for n, p in target.named_parameters() if p.requires_grad}
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            for name, param in target.named_parameters():
                if name in dtypes and param.dtype != dtypes[name]:
                    param.data = param.data.to(dtypes[name])

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            # the loss accounting the Trainer does not checkpoint (the unlogged loss sum, the
            # running total, the last logged step): restored on resume, so the logged losses
            # and train_loss equal an uninterrupted run's. Written last: it marks the
            # checkpoint complete (see last_checkpoint)
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                from clinlm.io import write_json
                write_json(folder / f"{LOSS_STATE}{self.args.process_index}.json",
                           {"tr_loss": float(self._tr_loss),
                            "total_loss_scalar": self._total_loss_scalar,
                            "globalstep_last_logged": self._globalstep_last_logged})

        def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
            # whole-model compilation by the Trainer (use_regional_compilation off): it builds
            # TorchDynamoPlugin from torch_compile_backend/_mode only; `dynamo` sets the rest
            args = super()._build_accelerator_args(**kwargs)
            plugin = args.get("dynamo_plugin")
            if plugin is not None and self.args.torch_compile:
                for key, value in self.dynamo.items():
                    setattr(plugin, key, value)
            return args

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch
            total, n = self.loss_fn(model, inputs)
            if num_items_in_batch is None:  # the Trainer did not count: this micro-batch's
                denom = n * self.current_gradient_accumulation_steps
            else:
                denom = num_items_in_batch
                if self.args.average_tokens_across_devices and self.args.world_size > 1:
                    # a global count; DDP averages gradients over processes, so undo that
                    total = total * self.accelerator.num_processes
            loss = total / torch.as_tensor(denom, device=total.device, dtype=total.dtype).clamp(min=1)
            return (loss, None) if return_outputs else loss

    return EngineTrainer


def adapter_dtype(cfg: dict[str, Any]):  # -> torch.dtype | None
    """The dtype LoRA weights train in: a quantized base's compute dtype (bfloat16 on GPUs as
    in QLoRA; ``auto``: bf16 where it is fast, float32 on CPUs without fast bf16 matmuls),
    ``None`` (peft's fp32) otherwise."""
    if not is_quantized(cfg.get("bnb")):
        return None
    return resolve_dtype(cfg["bnb"].get("bnb_4bit_compute_dtype") or "float32")


def _stream_dtype(model: Any) -> str | None:
    """The dtype of the model's norm weights (``non_quantized_dtype``'s effect), if any."""
    for name, param in model.named_parameters():
        if "norm" in name.rpartition(".")[0].rpartition(".")[2]:
            return str(param.dtype).removeprefix("torch.")
    return None


def loss_trend(log_history: list[dict[str, Any]], points: int = 3) -> dict[str, Any]:
    """Whether the training loss ended above where it started.

    Compares the mean of the first and of the last ``points`` logged losses (fewer when the
    run logged fewer than ``2 * points``: the two windows never overlap). ``loss_rose`` is
    None with under two logged losses. A regression run whose loss rises is a bug or a bad
    learning rate / precision, not a result.
    """
    losses = [float(h["loss"]) for h in log_history if "loss" in h]
    k = min(points, len(losses) // 2)
    if k == 0:
        return {"loss_rose": None, "first_loss_mean": None, "last_loss_mean": None}
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"loss_rose": bool(last > first), "first_loss_mean": round(first, 6),
            "last_loss_mean": round(last, 6)}


def peak_memory_gib() -> dict[str, float]:
    """Peak memory of this process: each visible GPU's allocator peak, and the CPU's RSS."""
    import torch
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
           / (2**30 if sys.platform == "darwin" else 2**20)}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"cuda:{i}"] = torch.cuda.max_memory_allocated(i) / 2**30
    return {k: round(v, 3) for k, v in out.items()}


def _sort_adapter_config(path: Path) -> None:
    """peft writes ``target_modules`` from a set, in an order that changes with Python's hash
    seed: sort it, so the same training gives the same bytes (and the same DVC hash)."""
    if not path.exists():
        return
    from clinlm.io import write_json
    cfg = json.loads(path.read_text())
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    write_json(path, cfg)


LOSS_STATE = "clinlm_loss_state_rank"  # + process index + .json, in each checkpoint
def _remove_empty_parents(folder: Path, levels: int) -> None:
    """Remove up to ``levels`` parents of ``folder`` while they are empty, so a finished run
    leaves no empty scratch folders behind (a folder holding anything, e.g. an API run's
    resumable answers, stays)."""
    for parent in list(folder.parents)[:levels]:
        try:
            parent.rmdir()
        except OSError:  # not empty (or gone): stop there
            return


FINGERPRINT = "run.json"                # in the checkpoints folder: what its checkpoints trained


def checkpoint_dir(run: Any) -> Path:
    """Where the Trainer writes checkpoints: ``<work_dir>/checkpoints`` (outside the DVC
    outputs: DVC deletes a stage's outputs before running it), else inside the model folder."""
    return Path(run.work_dir if run.work_dir is not None else run.model_dir) / "checkpoints"


def last_checkpoint(folder: Path, full_state: bool = True) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``folder``: one whose save finished (the
    loss state of process 0 is written last) and, with ``full_state``, that holds the
    optimizer and scheduler (``save_only_model`` checkpoints cannot resume training exactly)."""
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / f"{LOSS_STATE}0.json").exists() and (
                not full_state or (path / "optimizer.pt").exists()):
            found.append((int(step), path))
    return max(found)[1] if found else None


def data_digest(dataset: Any) -> str:
    """A hash of a training / validation dataset's content (columns of a ``datasets.Dataset``,
    or a list of row dicts)."""
    h = hashlib.sha256()
    if dataset is None:
        return "none"
    if hasattr(dataset, "column_names"):
        for col in sorted(dataset.column_names):
            h.update(col.encode())
            h.update(json.dumps(dataset[col], default=str).encode())
    else:
        h.update(json.dumps(list(dataset), default=str, sort_keys=True).encode())
    return h.hexdigest()


def run_fingerprint(run: Any, train_dataset: Any, eval_dataset: Any, precision: dict[str, Any],
                    world_size: int) -> dict[str, Any]:
    """What a checkpoint's training depends on: the model entry (without the keys that only
    scoring reads), the task section, the seed, the rows, the resolved precision, the process
    count and the library versions. A checkpoint resumes automatically only when it matches."""
    import peft
    import torch
    import transformers
    cfg = {k: v for k, v in run.cfg.items() if k not in ("predict", "description")}
    cfg["training"] = {k: v for k, v in (cfg.get("training") or {}).items()
                       if k != "resume_from_checkpoint"}
    return {"cfg": cfg, "task_cfg": run.task_cfg, "seed": run.seed,
            "train_rows": data_digest(train_dataset), "validation_rows": data_digest(eval_dataset),
            "precision": precision.get("resolved"), "world_size": world_size,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}}


def resume_checkpoint(setting: Any, folder: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from (``training.resume_from_checkpoint``; errors name it).

    null: the last complete checkpoint of this very run (same fingerprint), else none;
    false: none; true: the last complete checkpoint whatever changed (a warning lists it);
    a path: that checkpoint folder."""
    key = "training.resume_from_checkpoint"
    if setting is False:
        return None
    if isinstance(setting, str):
        path = Path(setting)
        if not (path / "trainer_state.json").exists():
            raise ValueError(f"{key}: {setting} is not a Trainer checkpoint folder "
                             f"(no trainer_state.json)")
        return path
    saved_path = Path(folder) / FINGERPRINT
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else None
    same = saved == fingerprint
    if setting is True:
        last = last_checkpoint(folder, full_state=False)
        if last is None:
            raise ValueError(f"{key}: true, but {folder} holds no complete checkpoint (a "
                             f"finished run removes its checkpoints)")
        if not same:
            changed = sorted(k for k in fingerprint if (saved or {}).get(k) != fingerprint[k])
            log.warning("%s: true: resuming from %s although the run changed since it was "
                        "written (%s): the result is not that of an uninterrupted run", key,
                        last, ", ".join(changed))
        return last
    if setting is not None:
        raise ValueError(f"{key}: {setting!r}; use null, true, false or a checkpoint path")
    if not same:
        if saved is not None:
            log.info("%s: the run changed since its checkpoints were written: starting over",
                     folder)
        return None
    last = last_checkpoint(folder)
    if last is not None:
        log.info("resuming from %s (the last complete checkpoint of this run)", last)
    return last


def _restore_loss_state(trainer: Any, checkpoint: Path):  # -> TrainerCallback
    """A callback putting a checkpoint's loss accounting back at the start of training (the
    Trainer resets it; see ``EngineTrainer._save_checkpoint``)."""
    from transformers import TrainerCallback

    class RestoreLossState(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            path = checkpoint / f"{LOSS_STATE}{args.process_index}.json"
            if not path.exists():
                return
            saved = json.loads(path.read_text())
            tr_loss = saved["tr_loss"]  # a NaN loss was written as null (strict JSON)
            trainer._tr_loss.fill_(float("nan") if tr_loss is None else tr_loss)
            trainer._total_loss_scalar = saved["total_loss_scalar"]
            trainer._globalstep_last_logged = saved["globalstep_last_logged"]
            trainer._initial_global_step = 0  # train_loss: the mean over the whole run

    return RestoreLossState()


def _sharded(targs: dict[str, Any]) -> bool:
    """Whether each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3)."""
    if targs.get("fsdp"):
        return True
    ds = targs.get("deepspeed")
    if isinstance(ds, str) and Path(ds).exists():
        ds = json.loads(Path(ds).read_text())
    return isinstance(ds, dict) and (ds.get("zero_optimization") or {}).get("stage") == 3


def fit(run: Any, model: Any, train_dataset: Any, *, processing_class: Any, loss_fn: LossFn,
        data_collator: Any = None, sft: bool = False, callbacks: list | None = None,
        remove_unused_columns: bool | None = None, n_tokens: int | None = None,
        meta_files: dict[str, Any] | None = None, eval_dataset: Any = None,
        eval_data_collator: Any = None,
        validate: Callable[[Any], dict[str, float]] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` on ``train_dataset`` and save adapter + processing class to ``run.model_dir``.

    Args:
        run: the ``clinlm.methods.interface.Run`` (``cfg["training"]``, ``cfg["sft"]``, seed, dirs).
        model: a peft model from ``load_model(..., lora=...)``.
        processing_class: the tokenizer or processor (saved beside the adapter).
        loss_fn: ``(model, inputs) -> (summed loss tensor, item count)``.
        sft: train through TRL's ``SFTTrainer`` with ``SFTConfig(**cfg["sft"], **training)``.
        n_tokens: tokens in one epoch of the training rows (for ``tokens_per_second``).
        meta_files: extra JSON files for the model folder (``{"head.json": {...}}``).
        eval_dataset: the validation slice in ``train_dataset``'s form (``eval_loss``), with
            ``eval_data_collator`` if it must differ from ``data_collator``; ``validate(model)``
            scores the slice with the method's prediction code and returns its metrics
            (:mod:`clinlm.llm.validation`). Required exactly when ``validation.rows`` is set.

    Returns:
        ``(trainer, info)``: the trainer (``trainer.model`` is the trained model) and
        ``train_info`` facts: losses (``loss_rose``: the last logged losses' mean is above
        the first ones', see :func:`loss_trend`), the precision (``auto`` resolved, see
        :func:`clinlm.llm.precision.report`), steps, world size, parameters, seconds,
        throughput, peak memory of every process. Only the main process writes files; under a
        distributed launch every process calls ``fit`` (the Trainer shards the rows).
    """
    from transformers import TrainingArguments

    from clinlm.llm.precision import report
    from clinlm.llm.validation import check_evaluation_keys, check_metric, evaluation_kwargs, has_validation
    cfg, out = run.cfg, Path(run.model_dir)
    precision = report(cfg)  # `auto` -> this machine's dtype, recorded with its reason
    check_evaluation_keys(cfg, f"models.{run.model}")
    training = dict(cfg.get("training") or {})
    resume_setting = training.pop("resume_from_checkpoint", None)
    if has_validation(cfg) != (eval_dataset is not None):
        raise ValueError(f"models.{run.model}.validation.rows: the {cfg['method']} method "
                         f"passed {'no' if eval_dataset is None else 'an'} evaluation set")
    if eval_dataset is not None:
        check_metric(training.get("metric_for_best_model"), run.task_type,
                     f"models.{run.model}.training")
        training = {**evaluation_kwargs(training), **training}
    ckpt_dir = checkpoint_dir(run)
    targs = build_training_kwargs(training, str(ckpt_dir), run.seed)
    if validate is not None and _sharded(targs):
        raise ValueError(f"models.{run.model}.validation.rows: the validation slice is scored by "
                         f"the method's own prediction code, which needs whole weights on each "
                         f"process; not with FSDP or DeepSpeed ZeRO-3 (training.fsdp / deepspeed)")
    dynamo = dict(cfg.get("dynamo") or {})
    compiled = resolve_compile(dynamo, targs, planned_tokens(
        targs, n_tokens, len(train_dataset), int(os.environ.get("WORLD_SIZE", 1))))
    if compiled is None or dynamo.get("use_regional_compilation"):
        # regional: compiled here, in place (see compile_repeated_blocks); the Trainer must
        # not compile again, nor TrainingArguments export ACCELERATE_DYNAMO_* for later runs.
        # Otherwise the keys stay: the Trainer compiles the whole model
        for key in COMPILE_KEYS:
            targs.pop(key, None)
        if compiled is not None:
            compiled["blocks"] = compile_repeated_blocks(model, compiled)
    if remove_unused_columns is not None:
        targs["remove_unused_columns"] = remove_unused_columns
    cbs = training_callbacks(targs, str(run.log_dir) if run.log_dir else None)
    patience = (cfg.get("validation") or {}).get("early_stopping_patience")
    if patience:
        from transformers import EarlyStoppingCallback
        cbs.append(EarlyStoppingCallback(patience, cfg["validation"]["early_stopping_threshold"]))
    cbs += list(callbacks or [])
    if sft:
        from trl import SFTConfig
        args = SFTConfig(**(cfg.get("sft") or {}), **targs)
    else:
        args = TrainingArguments(**targs)
    trainer = _trainer_class(sft)(model=model, args=args, train_dataset=train_dataset,
                                  eval_dataset=eval_dataset, processing_class=processing_class,
                                  data_collator=data_collator, callbacks=cbs, loss_fn=loss_fn,
                                  dynamo=dynamo, validate=validate,
                                  eval_data_collator=eval_data_collator)
    fingerprint = json.loads(json.dumps(run_fingerprint(
        run, train_dataset, eval_dataset, precision, int(args.world_size)), default=str))
    resume = resume_checkpoint(resume_setting, ckpt_dir, fingerprint)
    if trainer.is_world_process_zero():
        if resume is None or not resume.is_relative_to(ckpt_dir):
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # another run's checkpoints
        # whatever save_strategy says: a callback may save too (the budget curve's)
        from clinlm.io import write_json
        write_json(ckpt_dir / FINGERPRINT, fingerprint)
    if resume is not None:
        trainer.add_callback(_restore_loss_state(trainer, resume))
    dtype = adapter_dtype(cfg)
    if dtype is not None:  # TRL would cast QLoRA adapters to bf16 whatever the hardware
        for name, param in trainer.model.named_parameters():
            if param.requires_grad and "lora_" in name and "magnitude" not in name:
                param.data = param.data.to(dtype)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.time() - t0

    trainer.save_model(str(out))  # rank-aware (FSDP / ZeRO-3 gather), main process writes
    if trainer.is_world_process_zero():
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; params say it all
        _sort_adapter_config(out / "adapter_config.json")
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # only now: the model is saved
        _remove_empty_parents(ckpt_dir, levels=3)     # data/work/<task>/<model>, if emptied
        files = {"resolved_config.json": {"model": run.model, "task": run.task, "cfg": cfg,
                                          "task_cfg": run.task_cfg}, **(meta_files or {})}
        for name, obj in files.items():
            (out / name).write_text(json.dumps(obj, indent=2))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trend = loss_trend(trainer.state.log_history)
    if trend["loss_rose"] and trainer.is_world_process_zero():
        log.warning("%s/%s: the training loss rose (mean of the first logged losses %.4g, of "
                    "the last %.4g): check the learning rate and the precision (%s)",
                    run.task, run.model, trend["first_loss_mean"], trend["last_loss_mean"],
                    precision["resolved"])
    epochs = float(args.num_train_epochs)
    info = {
        "method": cfg["method"], "base": cfg["base"], "world_size": int(args.world_size),
        "distributed": str(getattr(trainer.accelerator.distributed_type, "value",
                                   trainer.accelerator.distributed_type)),  # NO, MULTI_CPU, FSDP, ...
        "steps": int(trainer.state.global_step), "train_loss": float(result.training_loss),
        **_validation_info(trainer, eval_dataset),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        **trend, "precision": precision,
        "attn_implementation": getattr(getattr(trainer.model, "config", None),
                                       "_attn_implementation", None),
        "non_quantized_dtype": _stream_dtype(trainer.model),
        "torch_compile": compiled,
        "trainable_parameters": int(sum(p.numel() for p in trainer.model.parameters()
                                        if p.requires_grad)),
        "train_seconds": round(seconds, 1),
        "peak_memory_gib": {f"rank{i}": p for i, p in enumerate(gather_object(peak_memory_gib()))},
    }
    if resume is not None:  # a fact of this session, not of the model (the stage's timing)
        info["resumed_from_step"] = int(resume.name.removeprefix("checkpoint-")) \
            if resume.name.removeprefix("checkpoint-").isdigit() else str(resume)
    if n_tokens is not None:
        info["tokens"] = n_tokens
        info["tokens_per_second"] = round(n_tokens * epochs / max(seconds, 1e-9), 1)
    return trainer, info


def _validation_info(trainer: Any, eval_dataset: Any) -> dict[str, Any]:
    """train_info facts of the validation: its size, the last evaluation's metrics, the best
    checkpoint's step and metric, and whether early stopping ended the run."""
    if eval_dataset is None:
        return {}
    state, args = trainer.state, trainer.args
    evals = [h for h in state.log_history if "eval_loss" in h]
    last = {k: v for k, v in (evals[-1] if evals else {}).items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))}
    planned = int(state.max_steps)
    return {"validation": {
        "rows": len(eval_dataset), "evaluations": len(evals), "last": last,
        "metric_for_best_model": args.metric_for_best_model,
        "best_metric": state.best_metric, "best_step": state.best_global_step,
        "best_model_loaded": bool(args.load_best_model_at_end and state.best_global_step),
        "stopped_early": int(state.global_step) < planned,
        "planned_steps": planned}}
