"""``method: head`` -- a new linear layer on the LM's last hidden state ("linear layer addition").

The base LM is loaded as ``AutoModelForSequenceClassification``: the transformer body plus a
freshly initialised linear head (``score`` for Llama-family models) applied to the final
hidden state of the last non-pad token of each row. ``config.pad_token_id`` is set from the
tokenizer so the model can find that token (right padding).

* classification (``Yes``/``No``): 2 outputs, label ``No`` -> 0, ``Yes`` -> 1, cross-entropy;
  ``p_yes`` is the softmax probability of class 1.
* multiclass: one output per class (``classes.json``, the run's class order), cross-entropy;
  ``p_<label>`` is the softmax over them.
* regression (float label): 1 output, mean-squared error on the target standardised with
  the mean/std of the training rows; predictions are un-standardised (``y_pred``) and
  bounded by the task's answer range (``clipped`` flags a moved one); ``y_lo``/``y_hi`` are
  NaN (no interval).

Input text is the row's ``statement``, followed by the task's question on a new line when the
task has one (``{target}`` substituted by :func:`clinlm.prompts.prompt_text`, the words sft's
chat prompt uses), with no chat template. Texts longer than ``predict.max_length``
tokens lose their *beginning* (left truncation) so the question and the pooled last token
are always kept.

QLoRA as in ``sft``, through the engine (:mod:`clinlm.llm`): ``bnb``, ``lora`` (``task_type``
is forced to ``SEQ_CLS``) and the head module -- found generically as the top-level child
with parameters outside the transformer body -- trained in full and saved with the adapter
through ``modules_to_save``. The loss (:func:`head_loss`) is computed in float32.

Params keys (``models.<m>``, method ``head``; defaults in :mod:`clinlm.config`):
  * ``class_weights``: ``null`` (plain cross-entropy) or ``"balanced"``: each class weighted
    by ``n_rows / (2 * n_rows_in_class)`` over the training rows used (inverse class
    frequency, for imbalanced labels such as no-shows). Classification only.
  * ``head_init``: ``probe`` starts the head at a linear probe -- ridge regression
    (regression) or logistic regression (classification) of the training targets on the base
    model's pooled last hidden states of up to ``head_init_rows`` training rows (one forward
    pass, no gradients; the penalty chosen by cross-validation on those rows) -- then
    fine-tunes as usual ("LP-FT", Kumar et al. 2022). ``random``: transformers' random init.
    ``auto`` (default): ``probe`` for regression, ``random`` for classification. Why: a random
    regression head outputs ~0 (the target mean) and, in a short CPU fine-tune, its scale grows
    more slowly than the LoRA body changes, so predictions stay shrunk towards the mean; a
    classification head starts at p = 0.5 and needs no scale, and the probe did not help it
    (the measurements: docs/results.md, "Why the defaults are what they are").
  * ``predict.max_length`` is also the training truncation length.
  * the rest as every LLM method (``base``, ``dtype``, ``bnb``, ``lora``, ``training``, ...).

Saved in ``run.model_dir``: the adapter (LoRA weights + full head weights), the tokenizer,
``head.json`` (task type, label map, target scaler, text question, head module names,
class weights) and ``resolved_config.json``. ``predict`` rebuilds the same model (same bnb
and dtype layout) and loads the adapter, so it reproduces the trained model's outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import PositiveInt

from clinlm.llm.config import LLMConfig
from clinlm.methods.interface import (
    CLASSES_FILE,
    CLASSIFICATION,
    MULTICLASS,
    REGRESSION,
    Method,
    Run,
    bounded_answers,
    class_probs,
    training_classes,
)
from clinlm.prompts import prompt_text

log = logging.getLogger(__name__)

LABELS: dict[str, int] = {"No": 0, "Yes": 1}
META_FILE = "head.json"


class HeadModelConfig(LLMConfig):
    method: Literal["head"]
    class_weights: Literal["balanced"] | None = None  # balanced: inverse class frequency (classification)
    # probe: start at a linear probe of the base's pooled states (LP-FT); random; auto: probe
    # for regression, random for classification
    head_init: Literal["auto", "probe", "random"] = "auto"
    head_init_rows: PositiveInt = 1000  # training rows the probe is fitted on (one forward pass)


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


def encode_labels(labels: pd.Series, task_type: str,
                  classes: list[str] | None = None) -> np.ndarray:
    """Classification: ``No``/``Yes`` -> 0/1 (int64); multiclass: the index in ``classes``
    (int64); regression: float64 (no NaN allowed)."""
    if task_type == MULTICLASS:
        idx = pd.Index(classes or []).get_indexer(labels.astype(str))
        if (idx < 0).any():
            raise ValueError(f"labels {sorted(set(labels.astype(str)[idx < 0]))[:5]} are not "
                             f"among the classes {classes}")
        return idx.astype(np.int64)
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
    """Summed float32 loss and row count: (weighted) cross-entropy, or squared error on
    standardised targets (:func:`clinlm.llm.fit.fit` divides by the step's row count)."""
    import torch.nn.functional as F

    logits = logits.float()
    if task_type in (CLASSIFICATION, MULTICLASS):
        weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        loss = F.cross_entropy(logits, labels.long().view(-1), weight=weight, reduction="sum")
    else:
        loss = F.mse_loss(logits.view(-1), labels.float().view(-1), reduction="sum")
    return loss, int(labels.shape[0])


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


def head_logits(model, tok, texts: list[str], batch_size: int = 32, max_length: int = 256,
                autocast_dtype: str | None = None, desc: str = "head") -> np.ndarray:
    """Raw head outputs (n, num_labels) float32 for ``texts``, in input order.

    Texts are sorted by token length so batches carry little padding (right padding; the
    model pools the last non-pad token). Under bf16/fp16 a batch holds rows of one length
    only (:func:`clinlm.llm.scorer.length_batches`): padding would change a row's rounding,
    and so its answer, with its batch-mates.
    """
    import torch
    from tqdm.auto import tqdm

    from clinlm.llm.scorer import autocast, length_batches, reduced_precision

    model.eval()
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    batches = length_batches([len(e) for e in enc], batch_size,
                             reduced_precision(model, autocast_dtype))
    dev = next(model.parameters()).device
    out = np.zeros((len(texts), int(model.config.num_labels)), dtype=np.float32)
    with torch.inference_mode(), autocast(model, autocast_dtype):
        for idx in tqdm(batches, desc=desc, unit="batch"):
            batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"].to(dev),
                           attention_mask=batch["attention_mask"].to(dev)).logits
            out[idx] = logits.float().cpu().numpy()
    return out


def pooled_states(model, tok, ids: list[list[int]], batch_size: int = 32,
                  autocast_dtype: str | None = None) -> np.ndarray:
    """(n, hidden) float64: the transformer body's final hidden state at each row's last token
    -- what the head sees (right padding: the last attended position)."""
    import torch
    from tqdm.auto import tqdm

    from clinlm.llm.scorer import autocast

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    order = np.argsort([len(e) for e in ids], kind="stable")
    dev = next(model.parameters()).device
    out = np.zeros((len(ids), int(base.config.hidden_size)), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(model, autocast_dtype):
        for start in tqdm(range(0, len(order), batch_size), desc="head probe", unit="batch"):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            mask = batch["attention_mask"].to(dev)
            h = body(input_ids=batch["input_ids"].to(dev), attention_mask=mask).last_hidden_state
            last = mask.sum(dim=1) - 1
            out[idx] = h[torch.arange(len(idx), device=dev), last].float().cpu().numpy()
    model.train(was_training)
    return out


def resolve_head_init(head_init: str, task_type: str) -> str:
    """``auto`` -> ``probe`` for regression, ``random`` for classification and multiclass
    (module docstring)."""
    if head_init != "auto":
        return head_init
    return "probe" if task_type == REGRESSION else "random"


def probe_weights(x: np.ndarray, y: np.ndarray, task_type: str, seed: int = 0,
                  num_labels: int = 2) -> tuple[np.ndarray, dict[str, Any]]:
    """Head weights (num_labels, hidden) of a linear probe on pooled states ``x``, without a
    bias (the Llama-family head has none): ridge on the standardised regression target, a
    logistic regression whose +/- half coefficients are the two class rows (softmax of the
    rows = the probe's sigmoid), or a multinomial one whose rows are the classes' (multiclass;
    a class the probe rows lack keeps zeros). The penalty is chosen by 5-fold
    cross-validation."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    if task_type == MULTICLASS:
        clf = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7).tolist(), cv=5, fit_intercept=False,
                                   max_iter=2000, random_state=seed).fit(x, y)
        w = np.zeros((num_labels, x.shape[1]))
        w[clf.classes_.astype(int)] = clf.coef_
        return w, {"C": float(np.atleast_1d(clf.C_)[0])}
    if task_type == CLASSIFICATION:
        clf = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7).tolist(), cv=5, fit_intercept=False,
                                   max_iter=2000, random_state=seed).fit(x, y)
        beta = clf.coef_[0]
        return np.stack([-beta / 2, beta / 2]), {"C": float(clf.C_[0])}
    reg = RidgeCV(alphas=np.logspace(-2, 5, 15), fit_intercept=False).fit(x, y)
    return reg.coef_.reshape(1, -1), {"alpha": float(reg.alpha_)}


def init_head_from_probe(model, heads: list[str], weights: np.ndarray) -> int:
    """Copy the probe's weights into the trainable head (peft's ``modules_to_save`` copy, and
    the original so both agree); returns how many weight tensors were set."""
    import torch
    n = 0
    for name, module in model.named_modules():
        leaf = name.split(".")
        if isinstance(module, torch.nn.Linear) and any(h in leaf for h in heads) and \
                tuple(module.weight.shape) == weights.shape:
            with torch.no_grad():
                module.weight.copy_(torch.as_tensor(weights, dtype=module.weight.dtype))
            n += 1
    if not n:
        raise RuntimeError(f"head_init: no {weights.shape} linear layer found under {heads}")
    return n


def _tokenizer(path: str | Path):
    from clinlm.llm.tokenizer import load_tokenizer
    return load_tokenizer(path, padding_side="right", truncation_side="left")


def _head_kwargs(task_type: str, num_labels: int, pad_token_id: int) -> dict[str, Any]:
    """``from_pretrained`` kwargs of the sequence-classification model."""
    problem = ("regression" if task_type == REGRESSION else "single_label_classification")
    return {"num_labels": num_labels, "problem_type": problem, "pad_token_id": pad_token_id}


def _lora_for_head(lora: dict[str, Any]):
    """The LoRA section for a loaded seq-cls model: SEQ_CLS, the new head trained in full."""
    def build(model) -> dict[str, Any]:
        out = dict(lora)
        if out.get("task_type") not in (None, "SEQ_CLS"):
            log.info("lora.task_type %r replaced by SEQ_CLS for the head method", out["task_type"])
        out["task_type"] = "SEQ_CLS"
        out["modules_to_save"] = list(dict.fromkeys([*(out.get("modules_to_save") or []),
                                                     *head_module_names(model)]))
        return out
    return build


class HeadMethod(Method):
    """QLoRA + a fully trained linear head on the last token (see module docstring).

    After ``train`` the trained model stays available as ``self.model`` / ``self.tok`` /
    ``self.meta`` (``predict_loaded`` scores with them without reloading).
    """

    name = "head"
    config = HeadModelConfig
    llm = exportable = True
    stack_role = "llm"
    library, hub_pipeline = "peft", "text-classification"

    def __init__(self) -> None:
        self.model: Any = None
        self.tok: Any = None
        self.meta: dict[str, Any] | None = None

    def train(self, run: Run, train_df: pd.DataFrame,
              extra_callbacks: list | None = None) -> dict[str, Any]:
        """Train LoRA adapters + the head; save adapter, tokenizer and ``head.json``
        (``extra_callbacks``: more TrainerCallbacks, e.g. the budget curve's checkpoints)."""
        import torch
        from datasets import Dataset
        from transformers import DataCollatorWithPadding

        from clinlm.llm.fit import fit
        from clinlm.llm.load import load_model
        from clinlm.llm.precision import plan_training
        from clinlm.llm.validation import score_metrics, train_rows

        cfg = run.cfg
        classes = training_classes(run, train_df) if run.task_type == MULTICLASS else None
        order = classes["labels"] if classes else None
        df, val = train_rows(run, train_df)  # the validation slice first, then max_train_rows
        y = encode_labels(df["label"], run.task_type, order)
        classification = run.task_type in (CLASSIFICATION, MULTICLASS)
        num_labels = len(order) if order else 2 if classification else 1
        scaler, weights = None, None
        if classification:
            labels = y.tolist()
            if cfg["class_weights"] == "balanced":
                weights = balanced_class_weights(y, num_labels)
        else:
            if cfg["class_weights"] is not None:
                log.info("class_weights=%r ignored for a regression task", cfg["class_weights"])
            scaler = TargetScaler.fit(y)
            labels = scaler.transform(y).astype(np.float32).tolist()

        max_length = cfg["predict"]["max_length"]
        question = prompt_text(run.task_cfg, "question") or None
        tok = _tokenizer(cfg["base"])
        ids = tok(head_texts(df["statement"].tolist(), question), truncation=True,
                  max_length=max_length)["input_ids"]
        # `auto` precision depends on the run's size: decided before the model loads
        plan_training(cfg["training"], sum(map(len, ids)), len(ids))
        model = load_model(cfg, "seq_cls", lora=_lora_for_head(cfg["lora"]), seed=run.seed,
                           gradient_checkpointing=bool(cfg["training"].get("gradient_checkpointing")),
                           **_head_kwargs(run.task_type, num_labels, tok.pad_token_id))
        heads = head_module_names(model.get_base_model())
        cw = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        probe = None
        if resolve_head_init(cfg["head_init"], run.task_type) == "probe":
            probe = self._probe_init(run, model, tok, ids, np.asarray(labels), heads, num_labels)

        def loss_fn(model, inputs):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            return head_loss(model(**inputs).logits, labels, run.task_type, cw)

        meta = {"task_type": run.task_type, "num_labels": num_labels,
                "labels": ({c: i for i, c in enumerate(order)} if order else
                           LABELS if classification else None),
                "scaler": asdict(scaler) if scaler else None, "question": question,
                "head_modules": heads, "class_weights": weights, "max_length": max_length}
        eval_data, validate = None, None
        if val is not None:  # eval_loss on the slice; its metrics from predict's own code
            v = encode_labels(val["label"], run.task_type, order)
            eval_data = Dataset.from_dict({
                "input_ids": tok(head_texts(val["statement"].tolist(), question), truncation=True,
                                 max_length=max_length)["input_ids"],
                "labels": v.tolist() if classification
                else scaler.transform(v).astype(np.float32).tolist()})

            def validate(model) -> dict[str, float]:
                pred = self.predict_loaded(run, val, model, tok, meta)
                return score_metrics(pred, val["label"], run.task_type)

        trainer, info = fit(run, model, Dataset.from_dict({"input_ids": ids, "labels": labels}),
                            processing_class=tok, loss_fn=loss_fn,
                            data_collator=DataCollatorWithPadding(tok), callbacks=extra_callbacks,
                            n_tokens=sum(map(len, ids)),
                            meta_files={META_FILE: meta, **({CLASSES_FILE: classes} if classes else {})},
                            eval_dataset=eval_data, validate=validate)
        self.model, self.tok, self.meta = trainer.model.eval(), tok, meta
        info.update(n_train=len(df), n_train_available=len(train_df), head_modules=heads,
                    class_weights=weights, head_init=probe or {"method": "random"})
        if scaler is not None:
            info.update(target_mean=scaler.mean, target_std=scaler.std)
        return info

    @staticmethod
    def _probe_init(run: Run, model, tok, ids: list[list[int]], y: np.ndarray,
                    heads: list[str], num_labels: int) -> dict[str, Any]:
        """``head_init: probe``: fit the probe on up to ``head_init_rows`` training rows (a
        seeded draw) and copy it into the head; returns what was done, for train_info."""
        from clinlm.llm.scorer import autocast_dtype
        cfg = run.cfg
        rng = np.random.default_rng(run.seed)
        n = min(len(ids), cfg["head_init_rows"])
        pick = np.sort(rng.choice(len(ids), n, replace=False))
        x = pooled_states(model, tok, [ids[i] for i in pick], cfg["predict"]["batch_size"],
                          autocast_dtype(cfg))
        w, penalty = probe_weights(x, y[pick], run.task_type, run.seed, num_labels)
        init_head_from_probe(model, heads, w)
        return {"method": "probe", "rows": n, **penalty}

    def load_model(self, run: Run) -> tuple[Any, Any, dict[str, Any]]:
        """(model, tokenizer, meta) from ``run.model_dir``: base as in training + the adapter."""
        from clinlm.llm.load import load_model
        from clinlm.llm.precision import plan_from_model

        plan_from_model(run.model_dir)  # `auto` precision as in training
        meta = json.loads((run.model_dir / META_FILE).read_text())
        if meta["task_type"] != run.task_type:
            raise ValueError(f"{run.model_dir} was trained for {meta['task_type']}, "
                             f"not {run.task_type}")
        tok = _tokenizer(run.model_dir)
        model = load_model(run.cfg, "seq_cls", adapter=run.model_dir,
                           **_head_kwargs(run.task_type, int(meta["num_labels"]), tok.pad_token_id))
        model.config.pad_token_id = tok.pad_token_id  # the pooling looks for the last non-pad
        return model, tok, meta

    def predict_loaded(self, run: Run, df: pd.DataFrame, model, tok,
                       meta: dict[str, Any]) -> pd.DataFrame:
        """Predict ``df`` with an already loaded/trained model (the schema of ``predict``)."""
        from clinlm.llm.scorer import autocast_dtype

        pcfg = run.cfg["predict"]
        texts = head_texts(df["statement"].tolist(), meta.get("question"))
        logits = head_logits(model, tok, texts, pcfg["batch_size"], pcfg["max_length"],
                             autocast_dtype(run.cfg), desc=f"head {run.task}")
        ids = df["id"].to_numpy()
        if meta["task_type"] in (CLASSIFICATION, MULTICLASS):
            z = logits.astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            if meta["task_type"] == MULTICLASS:  # head.json's labels: {label: output}
                order = sorted(meta["labels"], key=meta["labels"].get)
                return pd.DataFrame({"id": ids, **class_probs(order, p)})
            return pd.DataFrame({"id": ids, "p_yes": p[:, LABELS["Yes"]]})
        scaler = TargetScaler(**meta["scaler"])
        return pd.DataFrame({"id": ids, **bounded_answers(run.task_cfg,
                                                          scaler.inverse(logits[:, 0]))})

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load base + adapter from ``run.model_dir`` and score every row (batched)."""
        model, tok, meta = self.load_model(run)
        return self.predict_loaded(run, df, model, tok, meta)

    def load(self, run: Run):
        """The model loaded once (:meth:`load_model`); ``table -> predict rows``."""
        model, tok, meta = self.load_model(run)
        return lambda df: self.predict_loaded(run, df, model, tok, meta)

    def export_spec(self, run: Run) -> tuple[str, dict[str, Any], dict[str, str]]:
        """A sequence-classification folder with the trained head; ``head.json`` beside it
        (the regression scaler); the labels as ``id2label``."""
        from clinlm.llm.tokenizer import load_tokenizer

        meta_path = run.model_dir / META_FILE
        meta = json.loads(meta_path.read_text())
        kw = _head_kwargs(meta["task_type"], int(meta["num_labels"]),
                          load_tokenizer(run.model_dir).pad_token_id)
        if meta["task_type"] in (CLASSIFICATION, MULTICLASS):  # multiclass: head.json's
            names = dict(LABELS) if meta["task_type"] == CLASSIFICATION else meta["labels"]
            kw["label2id"] = {name: int(i) for name, i in names.items()}
            kw["id2label"] = {int(i): name for name, i in names.items()}
        return "seq_cls", kw, {META_FILE: meta_path.read_text()}

    def answer_reading(self, run: Run) -> str:
        ans = run.task_cfg.get("answer") or {}
        head = "A linear head on the last token's hidden state (sequence classification): "
        if run.task_type == CLASSIFICATION:
            return head + "softmax over No/Yes gives P(Yes)."
        if run.task_type == MULTICLASS:
            return head + ("one output per label; its softmax gives each label's probability. "
                           "The answer is the most probable label.")
        return head + ("one output, the standardised target; `head.json` holds the training "
                       "mean/std that turn it into the target's units, bounded to "
                       f"[{ans.get('min')}, {ans.get('max')}] (no interval).")
