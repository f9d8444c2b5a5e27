"""``method: sft`` -- supervised fine-tuning with the label in the answer (QLoRA + TRL).

Training: chat prompt (system + user statement) -> assistant answer (``Yes``/``No`` or an
age). Rows are tokenized once with the model's chat template; the loss covers the answer
tokens only (``completion_mask``) and projects only those positions through the LM head
(:func:`clinlm.llm.answer_logits.answer_loss`). Everything else is the engine's (:mod:`clinlm.llm`).

Prediction: one batched forward pass per batch, left padded, reading the next-token
distribution at the last prompt position, restricted to the candidate answer tokens
(classification: ``Yes`` vs ``No``; multiclass: every token of the labels' answers, each
label's whole answer scored, see :mod:`clinlm.llm.choices`; regression: digits, see
:mod:`clinlm.llm.numeric`). No ``generate()``, no full-vocabulary logits.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd

from clinlm.llm.config import LLMConfig
from clinlm.methods.interface import (
    CLASSES_FILE,
    CLASSIFICATION,
    MULTICLASS,
    Method,
    Run,
    class_probs,
    read_classes,
    training_classes,
)
from clinlm.prompts import answer_texts, build_messages, format_answer


class SFTModelConfig(LLMConfig):
    method: Literal["sft"]
    sft: dict[str, Any] = {}           # trl.SFTConfig fields TrainingArguments lacks


def prompt_texts(tok, statements: list[str], task_cfg: dict) -> list[str]:
    """Chat-template text of (system, user) ending with the assistant header."""
    return [tok.apply_chat_template(build_messages(s, task_cfg), tokenize=False,
                                    add_generation_prompt=True) for s in statements]


def template_prefix(tok, task_cfg: dict) -> list[int]:
    """The tokens every prompt of the task starts with (system turn, chat header), whatever
    the statement: the prefix the scorer caches, the same for a row alone or in a batch (a
    prefix taken from the batch's prompts would split a lone row differently)."""
    from clinlm.llm.scorer import shared_prefix_length
    enc = tok(prompt_texts(tok, ["A", "Z"], task_cfg), add_special_tokens=False)["input_ids"]
    return enc[0][:shared_prefix_length(enc)]


def tokenize_for_sft(tok, df: pd.DataFrame, task_cfg: dict, task_type: str,
                     texts: dict[str, str] | None = None) -> dict[str, list]:
    """``input_ids`` + ``completion_mask`` per row: prompt tokens, then answer + end-of-turn.

    The answer is rendered by the chat template itself (so every model's own end-of-turn
    token is learned) and cut after its first end-of-turn token. ``texts``: a multiclass
    run's label -> answer text.
    """
    prompts = prompt_texts(tok, df["statement"].tolist(), task_cfg)
    decimals = int((task_cfg.get("answer") or {}).get("decimals") or 0)
    fulls = [tok.apply_chat_template(build_messages(s, task_cfg, format_answer(
                 y, task_type, texts, decimals)), tokenize=False)
             for s, y in zip(df["statement"], df["label"], strict=True)]
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    f_ids = tok(fulls, add_special_tokens=False)["input_ids"]
    eot = tok.eos_token_id
    input_ids, masks = [], []
    for p, f in zip(p_ids, f_ids, strict=True):
        if f[:len(p)] != p:
            raise ValueError("chat template: the prompt is not a prefix of the full conversation")
        comp = f[len(p):]
        if eot in comp:
            comp = comp[:comp.index(eot) + 1]
        input_ids.append(p + comp)
        masks.append([0] * len(p) + [1] * len(comp))
    return {"input_ids": input_ids, "completion_mask": masks}


class SFTMethod(Method):
    """QLoRA supervised fine-tuning through TRL's ``SFTTrainer``."""

    name = "sft"
    config = SFTModelConfig
    llm = exportable = numeric_answer = True
    stack_role = "llm"
    library, hub_pipeline = "peft", "text-generation"

    def load(self, run: Run):
        """The base + adapter loaded once into a :class:`~clinlm.llm.scorer.Scorer` (the vllm
        engine loads per call: its engine owns the GPU)."""
        if run.cfg["predict"]["engine"] == "vllm":
            return super().load(run)
        from clinlm.llm.scorer import Scorer
        scorer = Scorer.from_run(run.model_dir, run.cfg)
        return lambda df: score_rows(scorer, run, df)

    def export_spec(self, run: Run) -> tuple[str, dict[str, Any], dict[str, str]]:
        return "causal", {}, {}

    def answer_reading(self, run: Run) -> str:
        ans = run.task_cfg.get("answer") or {}
        if run.task_type == CLASSIFICATION:
            return ("One forward pass over the chat prompt; P(Yes) is the next-token probability "
                    "of `Yes` renormalised over the first tokens of `Yes` and `No` (no sampling, "
                    "no `generate()`); `Yes` when P(Yes) >= 0.5.")
        if run.task_type == MULTICLASS:
            return ("One forward pass over the chat prompt, then each label's whole answer (its "
                    "tokens and the end of turn) scored token by token, each step renormalised "
                    "over the labels' tokens; the labels' probabilities renormalised over the "
                    "labels (`clinlm.llm.choices`). The answer is the most probable label.")
        step = (f"with {ans['decimals']} decimal(s)" if ans.get("decimals") else "whole numbers")
        return (f"The exact distribution over every answer in [{ans.get('min')}, "
                f"{ans.get('max')}] ({step}), character by character (P(6)·P(7|6)·P(end|67)), "
                "renormalised over that set; the point estimate is its median, the 90 % "
                "interval its 5th-95th percentiles (`clinlm.llm.numeric`).")

    def train(self, run: Run, train_df: pd.DataFrame,
              extra_callbacks: list | None = None) -> dict[str, Any]:
        """Fine-tune LoRA adapters on the answer tokens and save adapter + tokenizer.

        ``extra_callbacks`` (``TrainerCallback``s) are added to the trainer's, e.g. the
        benchmark's step timer.
        """
        from datasets import Dataset

        from clinlm.llm.answer_logits import answer_loss
        from clinlm.llm.fit import fit
        from clinlm.llm.load import load_model
        from clinlm.llm.precision import plan_training
        from clinlm.llm.tokenizer import load_tokenizer
        from clinlm.llm.validation import train_rows

        cfg = run.cfg
        classes = training_classes(run, train_df) if run.task_type == MULTICLASS else None
        texts = answer_texts(classes) if classes else None
        df, val = train_rows(run, train_df)  # the validation slice first, then max_train_rows
        tok = load_tokenizer(cfg["base"], padding_side="right")
        data = Dataset.from_dict(tokenize_for_sft(tok, df, run.task_cfg, run.task_type, texts))
        # `auto` precision depends on the run's size: decided before the model loads
        plan_training(cfg["training"], sum(map(len, data["input_ids"])), len(data))
        model = load_model(cfg, "causal", lora=cfg["lora"], seed=run.seed,
                           gradient_checkpointing=bool(cfg["training"].get("gradient_checkpointing")))
        eval_data = None if val is None else Dataset.from_dict(
            tokenize_for_sft(tok, val, run.task_cfg, run.task_type, texts))
        _, info = fit(run, model, data, processing_class=tok, loss_fn=answer_loss, sft=True,
                      callbacks=extra_callbacks, n_tokens=sum(map(len, data["input_ids"])),
                      eval_dataset=eval_data,
                      validate=None if val is None else validation_scorer(run, tok, val, classes),
                      meta_files={CLASSES_FILE: classes} if classes else None)
        info.update(n_train=len(df), n_train_available=len(train_df),
                    answer_tokens=sum(map(sum, data["completion_mask"])))
        return info

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Score every row with one batched forward pass per batch (see module docstring)."""
        from clinlm.llm.scorer import Scorer

        if run.task_type == CLASSIFICATION and run.cfg["predict"]["engine"] == "vllm":
            from clinlm.llm import vllm_engine
            from clinlm.llm.precision import plan_from_model
            from clinlm.llm.scorer import first_token_ids
            from clinlm.llm.tokenizer import load_tokenizer

            plan_from_model(run.model_dir)  # `auto` as in training
            tok = load_tokenizer(run.model_dir)
            ids = first_token_ids(tok, ["Yes", "No"])
            prompts = prompt_texts(tok, df["statement"].tolist(), run.task_cfg)
            p = vllm_engine.choice_probs(run.model_dir, run.cfg, run.work_dir or run.model_dir,
                                         prompts, ids)[:, 0]
            return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": p})
        return score_rows(Scorer.from_run(run.model_dir, run.cfg), run, df)


def validation_scorer(run: Run, tok: Any, val: pd.DataFrame,
                      classes: dict[str, Any] | None = None):
    """``validate(model) -> metrics`` for :func:`clinlm.llm.fit.fit`: the validation rows
    scored by :func:`score_rows` (the predict stage's code: Yes/No at the last prompt token,
    or the exact distribution over integer answers) on the model being trained."""
    from clinlm.llm.scorer import Scorer, autocast_dtype
    from clinlm.llm.validation import score_metrics

    def validate(model: Any) -> dict[str, float]:
        pcfg, side = run.cfg["predict"], tok.padding_side
        try:
            scorer = Scorer(model, tok, pcfg["batch_size"], pcfg["max_length"],
                            autocast_dtype(run.cfg), pcfg["prefix_cache"])
            pred = score_rows(scorer, run, val, classes)
        finally:
            tok.padding_side = side  # the training collator's
        return score_metrics(pred, val["label"], run.task_type)

    return validate


def label_sequences(tok: Any, task_cfg: dict, texts: list[str]) -> list[list[int]]:
    """Each multiclass answer text's tokens after the chat prompt, as training saw them."""
    from clinlm.llm.choices import answer_sequences

    def render(answer: str | None) -> str:
        return tok.apply_chat_template(build_messages("A", task_cfg, answer), tokenize=False,
                                       add_generation_prompt=answer is None)
    return answer_sequences(tok, render, texts)


def score_rows(scorer: Any, run: Run, df: pd.DataFrame,
               classes: dict[str, Any] | None = None) -> pd.DataFrame:
    """The sft answers for ``df`` with a loaded :class:`~clinlm.llm.scorer.Scorer`: one-token
    Yes/No probability; each class's whole answer (multiclass: ``classes``, default the
    model folder's ``classes.json``); or the exact digit-by-digit distribution over the
    numeric answers. Shared by :meth:`SFTMethod.predict` and ``clinlm ask``/``serve`` (which
    load once)."""
    prompts = prompt_texts(scorer.tok, df["statement"].tolist(), run.task_cfg)
    scorer.prefix_ids = template_prefix(scorer.tok, run.task_cfg)
    if run.task_type == CLASSIFICATION:
        p = scorer.choice_probs(prompts, ["Yes", "No"])[:, 0]
        return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": p})
    if run.task_type == MULTICLASS:
        from clinlm.llm.choices import sequence_probs
        classes = classes or read_classes(run.model_dir)
        seqs = label_sequences(scorer.tok, run.task_cfg, classes["texts"])
        p = sequence_probs(scorer, prompts, seqs, desc=f"labels {run.task}")
        return pd.DataFrame({"id": df["id"].to_numpy(), **class_probs(classes["labels"], p)})
    from clinlm.llm.numeric import decode_numeric
    ans = run.task_cfg["answer"]
    est = decode_numeric(scorer, prompts, ans["min"], ans["max"], decimals=ans["decimals"])
    return pd.DataFrame({"id": df["id"].to_numpy(), **est})
