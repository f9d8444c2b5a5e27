"""``method: head`` -- a new linear layer on the LM's last hidden state ("linear layer addition").

The base LM is loaded as ``AutoModelForSequenceClassification``: the transformer body plus a
freshly initialised linear head (``score`` for Llama-family models) applied to the final
hidden state of the last non-pad token of each row. ``config.pad_token_id`` is set from the
tokenizer so the model can find that token (right padding).

* classification (``Yes``/``No``): 2 outputs, label ``No`` -> 0, ``Yes`` -> 1, cross-entropy;
  ``p_yes`` is the softmax probability of class 1.
* regression (float label): 1 output, mean-squared error on the target standardised with
  the mean/std of the training rows; predictions are un-standardised (``y_pred``);
  ``y_lo``/``y_hi`` are NaN (no interval).

Input text is the row's ``statement``, followed by ``task_cfg["prompt"]["question"]`` on a new
line when the task has one, with no chat template. Texts longer than ``predict.max_length``
tokens lose their *beginning* (left truncation) so the question and the pooled last token
are always kept.

QLoRA as in ``sft``: ``bnb`` (4/8-bit base, ``prepare_model_for_kbit_training``), ``lora``
(``LoraConfig`` fields; ``task_type`` is forced to ``SEQ_CLS``) and the head module, found
generically as the top-level child with parameters outside the transformer body, is trained
in full and saved with the adapter through ``modules_to_save``. Training runs the HF
``Trainer`` with a padding collator; the loss is computed here (``HeadTrainer``), in float32.

Params keys (``models.<m>``, method ``head``):
  * ``base``, ``bnb``, ``lora``, ``training``, ``torch_threads``, ``max_train_rows``: as sft.
  * ``class_weights``: ``null`` (default, plain cross-entropy) or ``"balanced"``: each class
    weighted by ``n_rows / (2 * n_rows_in_class)`` over the training rows used, i.e.
    inverse class frequency, so both classes carry the same total weight (for imbalanced
    labels such as no-shows). Classification only; ignored (logged) for regression.
  * ``predict``: ``batch_size`` (32), ``max_length`` (256, also used in training),
    ``dtype`` (the base model's load dtype, default ``auto``), ``autocast_dtype`` (default:
    ``bfloat16``/``float16`` when ``training.bf16``/``training.fp16`` is on, else none;
    keep float32 on CPUs without native bf16 matmuls), ``merge_adapter`` (default true:
    fold LoRA into dequantized linear layers for prediction, see ``hf.merge_lora_dequantized``).

Saved in ``run.model_dir``: the adapter (LoRA weights + full head weights), the tokenizer,
``head.json`` (task type, label map, target scaler, text question, head module names,
class weights) and ``resolved_config.json``. ``predict`` rebuilds the same model (same bnb
and dtype layout) and loads the adapter, so it reproduces the trained model's outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm import hf
from clinlm.methods.base import CLASSIFICATION, REGRESSION, Method, Run
from clinlm.methods.sft import subsample

log = logging.getLogger(__name__)

LABELS: dict[str, int] = {"No": 0, "Yes": 1}
META_FILE = "head.json"
CLASS_WEIGHTS = (None, "balanced")


@dataclass
class TargetScaler:
    """Standardisation of regression targets: ``z = (y - mean) / std``."""

    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScaler:
        """Mean and (population) std of ``y``; a constant target gets std 1."""
        y = np.asarray(y, dtype=np.float64)
        std = float(y.std())
        return cls(float(y.mean()), std if std > 0 and np.isfinite(std) else 1.0)

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.std + self.mean


def encode_labels(labels: pd.Series, task_type: str) -> np.ndarray:
    """Classification: ``No``/``Yes`` -> 0/1 (int64); regression: float64 (no NaN allowed)."""
    if task_type == CLASSIFICATION:
        bad = sorted(set(labels.astype(str)) - set(LABELS))
        if bad:
            raise ValueError(f"classification labels must be Yes/No; got {bad[:5]}")
        return labels.astype(str).map(LABELS).to_numpy(dtype=np.int64)
    if task_type == REGRESSION:
        y = pd.to_numeric(labels, errors="raise").to_numpy(dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("regression labels contain NaN/inf")
        return y
    raise ValueError(f"unknown task type {task_type!r}")


def balanced_class_weights(y: np.ndarray, num_classes: int = 2) -> list[float]:
    """``n / (k * n_c)`` per class (inverse class frequency; sklearn's "balanced")."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"class_weights='balanced' needs every class in training; counts {counts}")
    return [float(len(y) / (num_classes * c)) for c in counts]


def head_loss(logits, labels, task_type: str, class_weights=None):
    """The training loss, in float32: (weighted) cross-entropy or MSE on standardised targets."""
    import torch.nn.functional as F

    logits = logits.float()
    if task_type == CLASSIFICATION:
        weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, labels.long().view(-1), weight=weight)
    return F.mse_loss(logits.view(-1), labels.float().view(-1))


def head_texts(statements: list[str], question: str | None) -> list[str]:
    """The model input per row: the statement, then the task question on its own line."""
    return [f"{s}\n{question}" if question else str(s) for s in statements]


def head_module_names(model) -> list[str]:
    """Top-level children of a ``*ForSequenceClassification`` model that hold the new head.

    Everything with parameters except the transformer body (``base_model_prefix``), e.g.
    ``["score"]`` for Llama/Qwen/Mistral, ``["classifier"]`` for BERT-like models.
    """
    body = getattr(model, "base_model_prefix", "model")
    names = [name for name, child in model.named_children()
             if name != body and any(True for _ in child.parameters())]
    if not names:
        raise ValueError(f"no classification head found among {[n for n, _ in model.named_children()]}")
    return names


def autocast_dtype(cfg: dict[str, Any]) -> str | None:
    """``predict.autocast_dtype`` if set, else the training precision (bf16/fp16 flags), else None."""
    pcfg = cfg.get("predict") or {}
    if "autocast_dtype" in pcfg:
        return pcfg["autocast_dtype"]
    training = cfg.get("training") or {}
    if training.get("bf16"):
        return "bfloat16"
    if training.get("fp16"):
        return "float16"
    return None


def load_head_model(cfg: dict[str, Any], num_labels: int, pad_token_id: int,
                    task_type: str):
    """Base LM as ``AutoModelForSequenceClassification`` (bnb/dtype from params), pad id set."""
    from transformers import AutoModelForSequenceClassification

    kw = hf.model_load_kwargs(cfg.get("bnb"), (cfg.get("predict") or {}).get("dtype"))
    problem = "single_label_classification" if task_type == CLASSIFICATION else "regression"
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg["base"], num_labels=num_labels, problem_type=problem, pad_token_id=pad_token_id, **kw)
    model.config.pad_token_id = pad_token_id  # the pooling looks for the last non-pad token
    model.config.use_cache = False
    return model


def head_logits(model, tok, texts: list[str], batch_size: int = 32, max_length: int = 256,
                autocast: str | None = None, desc: str = "head") -> np.ndarray:
    """Raw head outputs (n, num_labels) float32 for ``texts``, in input order.

    Texts are sorted by token length so batches carry little padding (right padding; the
    model pools the last non-pad token, so padding does not change a row's result).
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(e) for e in enc], kind="stable")
    dev = next(model.parameters()).device
    dtype = hf.resolve_dtype(autocast)
    ctx = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    out = np.zeros((len(texts), int(model.config.num_labels)), dtype=np.float32)
    with torch.inference_mode(), ctx:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"].to(dev),
                           attention_mask=batch["attention_mask"].to(dev)).logits
            out[idx] = logits.float().cpu().numpy()
    return out


def _tokenizer(path: str | Path):
    tok = hf.load_tokenizer(str(path), padding_side="right")
    tok.truncation_side = "left"
    return tok


def _head_trainer_class():
    """``Trainer`` whose loss is :func:`head_loss` (class weights, float32 logits)."""
    from transformers import Trainer

    class HeadTrainer(Trainer):
        # compute_loss returns a per-batch mean: Trainer divides it by the accumulation steps
        loss_is_scaled_for_ga = False

        def __init__(self, *args, task_type: str, class_weights=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.task_type, self.class_weights = task_type, class_weights

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = head_loss(outputs.logits, labels, self.task_type, self.class_weights)
            return (loss, outputs) if return_outputs else loss

    return HeadTrainer


class HeadMethod(Method):
    """QLoRA + a fully trained linear head on the last token (see module docstring).

    After ``train`` the trained model stays available as ``self.model`` / ``self.tok`` /
    ``self.meta`` (``predict_loaded`` scores with them without reloading).
    """

    name = "head"

    def __init__(self) -> None:
        self.model: Any = None
        self.tok: Any = None
        self.meta: dict[str, Any] | None = None

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Train LoRA adapters + the head; save adapter, tokenizer and ``head.json``."""
        import torch
        from datasets import Dataset
        from peft import get_peft_model, prepare_model_for_kbit_training
        from transformers import DataCollatorWithPadding, TrainingArguments

        cfg = run.cfg
        hf.set_threads(cfg.get("torch_threads"))
        torch.manual_seed(run.seed)
        cw = cfg.get("class_weights")
        if cw not in CLASS_WEIGHTS:
            raise ValueError(f"class_weights: expected null or 'balanced', got {cw!r}")
        df = subsample(train_df, cfg.get("max_train_rows"), run.seed, run.task_type)
        y = encode_labels(df["label"], run.task_type)
        classification = run.task_type == CLASSIFICATION
        num_labels = 2 if classification else 1
        scaler, weights = None, None
        if classification:
            labels = y.tolist()
            if cw == "balanced":
                weights = balanced_class_weights(y)
        else:
            if cw is not None:
                log.info("class_weights=%r ignored for a regression task", cw)
            scaler = TargetScaler.fit(y)
            labels = scaler.transform(y).astype(np.float32).tolist()

        pcfg = cfg.get("predict") or {}
        max_length = int(pcfg.get("max_length", 256))
        question = (run.task_cfg.get("prompt") or {}).get("question")
        tok = _tokenizer(cfg["base"])
        texts = head_texts(df["statement"].tolist(), question)
        ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        data = Dataset.from_dict({"input_ids": ids, "labels": labels})
        n_tokens = sum(map(len, ids))

        model = load_head_model(cfg, num_labels, tok.pad_token_id, run.task_type)
        heads = head_module_names(model)
        training = dict(cfg.get("training") or {})
        quantized = hf.build_bnb_config(cfg.get("bnb")) is not None
        if quantized:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(training.get("gradient_checkpointing")))
        elif training.get("gradient_checkpointing"):
            model.enable_input_require_grads()
        lora = dict(cfg["lora"])
        if lora.get("task_type") not in (None, "SEQ_CLS"):
            log.info("lora.task_type %r replaced by SEQ_CLS for the head method", lora["task_type"])
        lora["task_type"] = "SEQ_CLS"
        lora["modules_to_save"] = list(dict.fromkeys([*(lora.get("modules_to_save") or []), *heads]))
        model = get_peft_model(model, hf.build_lora_config(lora))

        out = Path(run.model_dir)
        targs = hf.build_training_kwargs(training, str(out / "checkpoints"), run.seed)
        callbacks = hf.training_callbacks(targs, str(run.log_dir) if run.log_dir else None)
        args = TrainingArguments(**targs)
        trainer = _head_trainer_class()(
            model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
            callbacks=callbacks, task_type=run.task_type,
            class_weights=None if weights is None else torch.tensor(weights, dtype=torch.float32))
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
        model = trainer.model
        model.eval()

        meta = {"task_type": run.task_type, "num_labels": num_labels,
                "labels": LABELS if classification else None,
                "scaler": asdict(scaler) if scaler else None, "question": question,
                "head_modules": heads, "class_weights": weights, "max_length": max_length}
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        (out / "resolved_config.json").write_text(json.dumps(
            {"model": run.model, "task": run.task, "cfg": cfg, "task_cfg": run.task_cfg}, indent=2))
        self.model, self.tok, self.meta = model, tok, meta

        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        info = {
            "method": self.name, "base": cfg["base"], "n_train": len(df),
            "n_train_available": len(train_df), "train_seconds": round(seconds, 1),
            "tokens": n_tokens,
            "tokens_per_second": round(n_tokens * args.num_train_epochs / max(seconds, 1e-9), 1),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "head_modules": heads, "class_weights": weights,
        }
        if scaler is not None:
            info.update(target_mean=scaler.mean, target_std=scaler.std)
        return info

    def load(self, run: Run) -> tuple[Any, Any, dict[str, Any]]:
        """(model, tokenizer, meta) from ``run.model_dir``: base as in training + the adapter."""
        from peft import PeftModel, prepare_model_for_kbit_training

        cfg, model_dir = run.cfg, Path(run.model_dir)
        hf.set_threads(cfg.get("torch_threads"))
        meta = json.loads((model_dir / META_FILE).read_text())
        if meta["task_type"] != run.task_type:
            raise ValueError(f"{model_dir} was trained for {meta['task_type']}, not {run.task_type}")
        tok = _tokenizer(model_dir)
        base = load_head_model(cfg, int(meta["num_labels"]), tok.pad_token_id, run.task_type)
        if hf.build_bnb_config(cfg.get("bnb")) is not None:
            # the same fp32 upcast of the non-quantized weights as in training (no checkpointing)
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        else:
            base = base.to(hf.device())
        model = PeftModel.from_pretrained(base, str(model_dir))
        if (cfg.get("predict") or {}).get("merge_adapter", True):
            # LoRA folded into dequantized linear layers: same outputs up to float rounding,
            # faster (no per-call dequantization, no extra LoRA matmuls); the head stays.
            model = hf.merge_lora_dequantized(model, (cfg.get("predict") or {}).get("dtype"))
        return model.eval(), tok, meta

    def predict_loaded(self, run: Run, df: pd.DataFrame, model, tok,
                       meta: dict[str, Any]) -> pd.DataFrame:
        """Predict ``df`` with an already loaded/trained model (the schema of ``predict``)."""
        pcfg = run.cfg.get("predict") or {}
        texts = head_texts(df["statement"].tolist(), meta.get("question"))
        logits = head_logits(model, tok, texts, int(pcfg.get("batch_size", 32)),
                             int(pcfg.get("max_length", meta.get("max_length", 256))),
                             autocast_dtype(run.cfg), desc=f"head {run.task}")
        ids = df["id"].to_numpy()
        if meta["task_type"] == CLASSIFICATION:
            z = logits.astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            return pd.DataFrame({"id": ids, "p_yes": p[:, LABELS["Yes"]]})
        scaler = TargetScaler(**meta["scaler"])
        nan = np.full(len(df), np.nan)
        return pd.DataFrame({"id": ids, "y_pred": scaler.inverse(logits[:, 0]),
                             "y_lo": nan, "y_hi": nan})

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load base + adapter from ``run.model_dir`` and score every row (batched)."""
        model, tok, meta = self.load(run)
        return self.predict_loaded(run, df, model, tok, meta)
