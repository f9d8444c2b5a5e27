"""``method: vlm`` -- a vision-language model on (ECG image, text) pairs with a numeric answer.

Each row is one prompt: the subject's ECG picture (the ``render`` stage's PNG) and text, in
the seed's format (``prompt_template``, ``{image}`` where the picture goes, ``{text}`` the
row's text)::

    {image}{text}
    Question: From this ECG picture, tell the vascular age of that person? Answer: The age is 57

The answer (the integer age, then the tokenizer's end token) is the only part with a loss,
computed at the answer positions only (no vocabulary projection elsewhere). ``text`` is the
row's statement without its ECG sentence (``ecg_text: false``, default: the picture carries
the ECG) or the whole statement (``ecg_text: true``).

Model families (found from the base's ``config.model_type``):
  * ``idefics`` -- ``IdeficsForVisionText2Text`` (Idefics-9b/80b, the seed's model): gated
    cross-attention to the image; the processor takes ``[text, image, text]`` lists.
  * everything ``AutoModelForImageTextToText`` loads (Idefics2, Idefics3, SmolVLM, ...): the
    image becomes tokens in the text (``<image>``), the processor expands them.
The CPU default is ``data/models/base/smolvlm-ecg``, an Idefics3 model composed by the
``vlm_base`` stage (``clinlm.vlm_base.compose_idefics3``): SmolLM2's pretrained weights as
the language model, a small vision encoder + connector trained here from scratch.

Training: bitsandbytes (``bnb``, e.g. 4-bit NF4 with ``llm_int8_skip_modules``), LoRA
(``lora``; ``modules_to_save`` trains e.g. the new vision encoder in full), HF ``Trainer``
(``training``) with a collator that loads each image and applies ECG-safe augmentation:
a small random scale and shift on white paper, never a flip (a mirrored ECG is another
ECG; ``image``: ``augment``, ``max_shift`` (fraction of the size), ``max_scale``).

Prediction: the same numeric decoding as ``sft`` (:mod:`clinlm.numeric`): the exact
probability of every integer age in ``tasks.<task>.answer`` ``[min, max]``, one prompt pass
(image included) per row plus cached digit steps; the median is the estimate and the
5th/95th percentiles the 90 % interval.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm import hf
from clinlm.methods.base import REGRESSION, Method, Run
from clinlm.methods.sft import subsample
from clinlm.scoring import AnswerScorer

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = ("{image}{text}\nQuestion: From this ECG picture, tell the vascular age of "
                    "that person? Answer: The age is ")
IMAGE, TEXT = "{image}", "{text}"
META_FILE = "vlm.json"


def vlm_family(base: str | Path) -> str:
    """``"idefics"`` for Idefics (v1) checkpoints, else ``"auto"`` (AutoModelForImageTextToText)."""
    from transformers import AutoConfig
    return "idefics" if AutoConfig.from_pretrained(str(base)).model_type == "idefics" else "auto"


def row_texts(statements: list[str], ecg_text: bool) -> list[str]:
    """The text part of each prompt: the statement, without its ``ECG: ...`` sentence unless
    ``ecg_text`` (vascular statements end with it; other statements are kept whole)."""
    return [str(s) if ecg_text else str(s).split(" ECG: ")[0] for s in statements]


def build_prompts(texts: list[str], template: str) -> list[str]:
    """``template`` filled with each text; ``{image}`` stays as the picture's placeholder."""
    if template.count(IMAGE) != 1 or template.count(TEXT) != 1:
        raise ValueError(f"prompt_template needs exactly one {IMAGE} and one {TEXT}: {template!r}")
    return [template.replace(TEXT, t) for t in texts]


def augment(img: Any, rng: np.random.Generator, max_shift: float = 0.02,
            max_scale: float = 0.05) -> Any:
    """A random zoom in ``1 +- max_scale`` and shift up to ``max_shift`` of the size, on white.

    No flips or rotations: lead order, time direction and polarity carry the diagnosis.
    """
    from PIL import Image

    w, h = img.size
    s = 1.0 + rng.uniform(-max_scale, max_scale)
    dx, dy = rng.uniform(-max_shift, max_shift, size=2) * (w, h)
    # output pixel (x, y) samples input ((x - cx - dx) / s + cx, ...): zoom about the centre
    cx, cy = w / 2, h / 2
    coeffs = (1 / s, 0, cx - (cx + dx) / s, 0, 1 / s, cy - (cy + dy) / s)
    return img.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                         fillcolor=(255, 255, 255))


def load_image(path: str | Path) -> Any:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the ECG image ({e})") from e


def encode(proc: Any, family: str, prompts: list[str], images: list[Any]) -> dict[str, Any]:
    """Processor inputs for a batch (padding on the tokenizer's side), as torch tensors."""
    if family == "idefics":
        seqs = []
        for p, im in zip(prompts, images, strict=True):
            before, after = p.split(IMAGE)
            seqs.append([x for x in (before, im, after) if not isinstance(x, str) or x])
        return dict(proc(text=seqs, padding="longest", return_tensors="pt",
                         add_end_of_utterance_token=False))
    token = getattr(proc, "image_token", "<image>")
    token = getattr(token, "content", token)
    texts = [p.replace(IMAGE, str(token)) for p in prompts]
    return dict(proc(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt"))


def answer_strings(labels: pd.Series, tok: Any) -> list[str]:
    """The training answer per row: the rounded integer target, then the end token."""
    y = pd.to_numeric(labels, errors="raise").to_numpy(dtype=float)
    if not np.isfinite(y).all():
        raise ValueError("vlm: regression labels contain NaN/inf")
    return [f"{int(round(v))}{tok.eos_token}" for v in y]


class VLMCollator:
    """Rows ``{"prompt", "image", "answer"}`` -> model inputs + ``labels`` (answer tokens only)."""

    def __init__(self, proc: Any, family: str, image_cfg: dict[str, Any], seed: int) -> None:
        self.proc, self.family = proc, family
        self.augment = bool(image_cfg.get("augment", True))
        self.max_shift = float(image_cfg.get("max_shift", 0.02))
        self.max_scale = float(image_cfg.get("max_scale", 0.05))
        self.rng = np.random.default_rng(seed)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tok = self.proc.tokenizer
        images = [load_image(r["image"]) for r in rows]
        if self.augment:
            images = [augment(im, self.rng, self.max_shift, self.max_scale) for im in images]
        tok.padding_side = "right"
        batch = encode(self.proc, self.family, [r["prompt"] + r["answer"] for r in rows], images)
        labels = torch.full_like(batch["input_ids"], -100)
        lengths = batch["attention_mask"].sum(-1)
        for i, r in enumerate(rows):  # the answer is each row's last real tokens
            ans = tok(r["answer"], add_special_tokens=False)["input_ids"]
            end = int(lengths[i])
            labels[i, end - len(ans):end] = torch.tensor(ans)
        batch["labels"] = labels
        return batch


def vlm_answer_loss(model: Any, inputs: dict[str, Any]):
    """Mean next-token cross-entropy at the answer positions (labels != -100) only."""
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    hidden = causal.model(**inputs, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = causal.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, target[keep])


def _trainer_class():
    from transformers import Trainer

    class VLMTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = vlm_answer_loss(model, inputs)
            return (loss, None) if return_outputs else loss

    return VLMTrainer


def load_vlm(base: str | Path, bnb: dict[str, Any] | None, dtype: str | None,
             processor_dir: str | Path | None = None) -> tuple[Any, Any, str]:
    """(model, processor, family) for a VLM folder or hub id (bnb/dtype as in params); the
    processor comes from ``processor_dir`` when given (a trained run's folder)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, IdeficsForVisionText2Text

    family = vlm_family(base)
    cls = IdeficsForVisionText2Text if family == "idefics" else AutoModelForImageTextToText
    model = cls.from_pretrained(str(base), **hf.model_load_kwargs(bnb, dtype))
    model.config.use_cache = False
    proc = AutoProcessor.from_pretrained(str(processor_dir or base))
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return model, proc, family


class VLMScorer(AnswerScorer):
    """:class:`AnswerScorer` whose prompt pass runs the image too (``images`` set per call).

    The digit steps of the numeric decoding are text-only on the prompt's KV cache: the
    language model for token-image models; for Idefics (v1), whose text layers cross-attend
    to the image at every step, the batch's image states are passed again (``decode_step``).
    """

    def __init__(self, model: Any, proc: Any, family: str, batch_size: int = 8,
                 autocast_dtype: str | None = None) -> None:
        super().__init__(model, proc.tokenizer, batch_size, 10**9, autocast_dtype,
                         prefix_cache=False)
        self.proc, self.family, self.images = proc, family, None
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = causal.model
        self._image_states = None
        if family == "idefics":
            self.decoder = self.body  # numeric reads its attention implementation

    def prompt_batches(self, prompts: list[str], desc: str = "scoring", keep_cache: bool = False):
        """As :meth:`AnswerScorer.prompt_batches`, with ``self.images[i]`` in prompt ``i``."""
        import torch
        from tqdm.auto import tqdm

        if self.images is None or len(self.images) != len(prompts):
            raise ValueError("VLMScorer: set .images (one per prompt) before scoring")
        self.tok.padding_side = "left"
        dev = next(self.model.parameters()).device
        with torch.inference_mode(), self._autocast():
            for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="batch"):
                idx = np.arange(start, min(start + self.batch_size, len(prompts)))
                imgs = [load_image(self.images[i]) if isinstance(self.images[i], str | Path)
                        else self.images[i] for i in idx]
                enc = {k: v.to(dev) for k, v in
                       encode(self.proc, self.family, [prompts[i] for i in idx], imgs).items()}
                mask = enc.pop("attention_mask")
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.body(attention_mask=mask, position_ids=pos, use_cache=True, **enc)
                if self.family == "idefics":
                    states = out.image_hidden_states
                    self._image_states = states.reshape(len(idx), 1, *states.shape[-2:])
                yield idx, out, mask

    def decode_step(self, rows: Any, **kw: Any):
        """One text-only step on the prompts' cache; ``rows`` index the current batch."""
        if self.family != "idefics":
            return self.decoder(**kw)
        import torch
        states = self._image_states if rows is None else self._image_states[rows]
        key = ("perceiver_embeddings" if self.body.config.use_resampler
               else "image_encoder_embeddings")
        ids = kw["input_ids"]
        return self.body(**kw, **{key: states},
                         image_attention_mask=torch.ones(*ids.shape, 1, dtype=torch.long,
                                                         device=ids.device))


class VLMMethod(Method):
    """Fine-tune a vision-language model on (ECG image, text) -> age (see module docstring)."""

    name = "vlm"

    def _prompts_and_images(self, run: Run, df: pd.DataFrame) -> tuple[list[str], list[Path]]:
        cfg = run.cfg
        image_dir = Path((cfg.get("image") or {}).get("dir") or
                         run.data_dir.parent.parent / "interim" / run.task / "images")
        paths = [image_dir / f"{i}.png" for i in df["id"].astype(str)]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} ECG image(s) missing, e.g. {missing[0]} "
                                    f"(run the render stage; source csv has no recordings)")
        texts = row_texts(df["statement"].tolist(), bool(cfg.get("ecg_text", False)))
        return build_prompts(texts, cfg.get("prompt_template") or DEFAULT_TEMPLATE), paths

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Train LoRA (+ ``modules_to_save``) on the answer tokens; save adapter + processor."""
        import torch
        from peft import get_peft_model, prepare_model_for_kbit_training
        from transformers import TrainingArguments

        if run.task_type != REGRESSION:
            raise ValueError(f"vlm predicts a number; task {run.task} is {run.task_type}")
        cfg = run.cfg
        hf.set_threads(cfg.get("torch_threads"))
        torch.manual_seed(run.seed)
        df = subsample(train_df, cfg.get("max_train_rows"), run.seed, run.task_type)
        prompts, paths = self._prompts_and_images(run, df)
        model, proc, family = load_vlm(cfg["base"], cfg.get("bnb"),
                                       (cfg.get("predict") or {}).get("dtype"))
        answers = answer_strings(df["label"], proc.tokenizer)
        rows = [{"prompt": p, "image": str(i), "answer": a}
                for p, i, a in zip(prompts, paths, answers, strict=True)]
        training = dict(cfg.get("training") or {})
        if hf.build_bnb_config(cfg.get("bnb")) is not None:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(training.get("gradient_checkpointing")))
        model = get_peft_model(model, hf.build_lora_config(cfg["lora"]))

        out = Path(run.model_dir)
        targs = hf.build_training_kwargs(training, str(out / "checkpoints"), run.seed)
        targs["remove_unused_columns"] = False  # the collator needs the raw rows
        callbacks = hf.training_callbacks(targs, str(run.log_dir) if run.log_dir else None)
        args = TrainingArguments(**targs)
        trainer = _trainer_class()(
            model=model, args=args, train_dataset=rows, callbacks=callbacks,
            data_collator=VLMCollator(proc, family, cfg.get("image") or {}, run.seed))
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0

        out.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(out)
        proc.save_pretrained(out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        base_info = Path(cfg["base"]) / "materialized.json"
        parts = json.loads(base_info.read_text()) if base_info.exists() else {}
        meta = {"family": family, "task_type": run.task_type,
                "pretrained": parts.get("pretrained", ["all (from the base checkpoint)"]),
                "random_init": parts.get("random_init", [])}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        (out / "resolved_config.json").write_text(json.dumps(
            {"model": run.model, "task": run.task, "cfg": cfg, "task_cfg": run.task_cfg}, indent=2))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return {
            "method": self.name, "base": cfg["base"], "family": family, "n_train": len(df),
            "n_train_available": len(train_df), "train_seconds": round(seconds, 1),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "trainable_parameters": int(sum(p.numel() for p in model.parameters()
                                            if p.requires_grad)),
            "pretrained_parts": meta["pretrained"], "random_init_parts": meta["random_init"],
        }

    def load_scorer(self, run: Run) -> VLMScorer:
        """Base as in training + the saved adapter (folded into the layers when asked)."""
        from peft import PeftModel, prepare_model_for_kbit_training

        cfg, pcfg = run.cfg, run.cfg.get("predict") or {}
        hf.set_threads(cfg.get("torch_threads"))
        model, proc, family = load_vlm(cfg["base"], cfg.get("bnb"), pcfg.get("dtype"),
                                       processor_dir=run.model_dir)
        if hf.build_bnb_config(cfg.get("bnb")) is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model = model.to(hf.device())
        model = PeftModel.from_pretrained(model, str(run.model_dir))
        if pcfg.get("merge_adapter", True):
            model = hf.merge_lora_dequantized(model, pcfg.get("dtype"))
        return VLMScorer(model.eval(), proc, family, int(pcfg.get("batch_size", 8)),
                         pcfg.get("autocast_dtype"))

    def predict_with(self, scorer: VLMScorer, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Numeric decoding of every row with a loaded scorer (the schema of ``predict``)."""
        from clinlm.numeric import decode_numeric

        prompts, paths = self._prompts_and_images(run, df)
        scorer.images = [str(p) for p in paths]
        ans = run.task_cfg.get("answer") or {}
        strategy = "levels" if scorer.family == "idefics" else "auto"
        est = decode_numeric(scorer, prompts, int(ans.get("min", 18)), int(ans.get("max", 110)),
                             strategy=strategy)
        return pd.DataFrame({"id": df["id"].to_numpy(), **est})

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load the trained model from ``run.model_dir`` and decode every row."""
        return self.predict_with(self.load_scorer(run), run, df)
