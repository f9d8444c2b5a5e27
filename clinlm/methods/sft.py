"""``method: sft`` -- supervised fine-tuning with the label in the answer (QLoRA + TRL).

Training: chat prompt (system + user statement) -> assistant answer (``Yes``/``No`` or an
age). Rows are tokenized once with the model's chat template; the loss covers the answer
tokens only (``completion_mask``), and ``AnswerSFTTrainer`` projects only those positions
through the LM head, so the 49k-token vocabulary is never materialized for the prompt.

Prediction: one batched forward pass per batch, left padded, reading the next-token
distribution at the last prompt position, restricted to the candidate answer tokens
(classification: ``Yes`` vs ``No``; regression: digits, see ``clinlm.numeric``). No
``generate()``, no full-vocabulary logits.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import pandas as pd

from clinlm import hf
from clinlm.methods.base import CLASSIFICATION, Method, Run
from clinlm.prompts import build_messages, format_answer

log = logging.getLogger(__name__)


def subsample(df: pd.DataFrame, n: int | None, seed: int, task_type: str) -> pd.DataFrame:
    """A seeded, stratified (classification) subsample of ``n`` rows; all rows when n is None."""
    if n is None or n >= len(df):
        return df
    if task_type == CLASSIFICATION:
        frac = n / len(df)
        parts = [g.sample(frac=frac, random_state=seed) for _, g in df.groupby("label")]
        return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def prompt_texts(tok, statements: list[str], task_cfg: dict) -> list[str]:
    """Chat-template text of (system, user) ending with the assistant header."""
    return [tok.apply_chat_template(build_messages(s, task_cfg), tokenize=False,
                                    add_generation_prompt=True) for s in statements]


def tokenize_for_sft(tok, df: pd.DataFrame, task_cfg: dict, task_type: str) -> dict[str, list]:
    """``input_ids`` + ``completion_mask`` per row: prompt tokens, then answer + end-of-turn.

    The answer is rendered by the chat template itself (so every model's own end-of-turn
    token is learned) and cut after its first end-of-turn token.
    """
    prompts = prompt_texts(tok, df["statement"].tolist(), task_cfg)
    fulls = [tok.apply_chat_template(build_messages(s, task_cfg, format_answer(y, task_type)),
                                     tokenize=False)
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


def adapter_dtype(cfg: dict[str, Any]):  # -> torch.dtype | None
    """The dtype LoRA weights train in: the bnb compute dtype of a quantized base (float32
    on CPUs without bf16 matmuls, bfloat16 on GPUs as in QLoRA); ``None`` otherwise."""
    bnb = cfg.get("bnb") or {}
    if not (bnb.get("load_in_4bit") or bnb.get("load_in_8bit")):
        return None
    return hf.resolve_dtype(bnb.get("bnb_4bit_compute_dtype") or "float32")


class SFTMethod(Method):
    """QLoRA supervised fine-tuning through TRL's ``SFTTrainer``."""

    name = "sft"

    def train(self, run: Run, train_df: pd.DataFrame,
              extra_callbacks: list | None = None) -> dict[str, Any]:
        """Fine-tune LoRA adapters on the answer tokens and save adapter + tokenizer.

        ``extra_callbacks`` (``TrainerCallback``s) are added to the trainer's, e.g. the
        benchmark's step timer.
        """
        import torch
        from datasets import Dataset
        from peft import get_peft_model, prepare_model_for_kbit_training
        from trl import SFTConfig

        from clinlm.sft_trainer import AnswerSFTTrainer

        cfg = run.cfg
        hf.set_threads(cfg.get("torch_threads"))
        torch.manual_seed(run.seed)
        df = subsample(train_df, cfg.get("max_train_rows"), run.seed, run.task_type)
        tok = hf.load_tokenizer(cfg["base"], padding_side="right")
        data = Dataset.from_dict(tokenize_for_sft(tok, df, run.task_cfg, run.task_type))
        n_tokens = sum(map(len, data["input_ids"]))
        n_answer = sum(map(sum, data["completion_mask"]))

        model = hf.load_causal_lm(cfg["base"], cfg.get("bnb"), cfg.get("predict", {}).get("dtype"))
        training = dict(cfg.get("training", {}))
        if hf.build_bnb_config(cfg.get("bnb")) is not None:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(training.get("gradient_checkpointing")))
        model = get_peft_model(model, hf.build_lora_config(cfg["lora"]))

        out = run.model_dir
        targs = hf.build_training_kwargs(training, str(out / "checkpoints"), run.seed)
        callbacks = hf.training_callbacks(targs, str(run.log_dir) if run.log_dir else None)
        callbacks += list(extra_callbacks or [])
        args = SFTConfig(**cfg.get("sft", {}), **targs)
        trainer = AnswerSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                   callbacks=callbacks, adapter_dtype=adapter_dtype(cfg))
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
        model.save_pretrained(out)
        tok.save_pretrained(out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        info = {
            "method": self.name, "base": cfg["base"], "n_train": len(df),
            "n_train_available": len(train_df), "train_seconds": round(seconds, 1),
            "tokens": n_tokens, "answer_tokens": n_answer,
            "tokens_per_second": round(n_tokens * args.num_train_epochs / seconds, 1),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        }
        (out / "resolved_config.json").write_text(json.dumps(
            {"model": run.model, "task": run.task, "cfg": cfg, "task_cfg": run.task_cfg}, indent=2))
        return info

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Score every row with one batched forward pass per batch (see module docstring)."""
        from clinlm.scoring import AnswerScorer

        scorer = AnswerScorer.from_adapter(run.model_dir, run.cfg)
        prompts = prompt_texts(scorer.tok, df["statement"].tolist(), run.task_cfg)
        if run.task_type == CLASSIFICATION:
            p = scorer.choice_probs(prompts, ["Yes", "No"])[:, 0]
            return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": p})
        from clinlm.numeric import decode_numeric
        ans = run.task_cfg.get("answer", {})
        est = decode_numeric(scorer, prompts, int(ans.get("min", 18)), int(ans.get("max", 110)))
        return pd.DataFrame({"id": df["id"].to_numpy(), **est})

