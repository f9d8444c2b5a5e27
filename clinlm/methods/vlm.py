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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt

from clinlm.config import Strict
from clinlm.llm.config import LLMConfig, PredictConfig
from clinlm.llm.scorer import Scorer, autocast_dtype
from clinlm.methods.interface import REGRESSION, Method, Run

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = ("{image}{text}\nQuestion: From this ECG picture, tell the vascular age of "
                    "that person? Answer: The age is ")
IMAGE, TEXT = "{image}", "{text}"
META_FILE = "vlm.json"


class VLMPredictConfig(PredictConfig):
    batch_size: PositiveInt = 8        # a row carries an image: smaller batches


class ImageAugmentConfig(Strict):
    augment: bool = True                          # random zoom and shift while training (no flips)
    max_shift: float = Field(0.02, ge=0, lt=0.5)  # fraction of the image size
    max_scale: float = Field(0.05, ge=0, lt=0.5)  # zoom in or out by up to this fraction
    dir: str | None = None                        # default: data/interim/<task>/images


class VLMModelConfig(LLMConfig):
    method: Literal["vlm"]
    predict: VLMPredictConfig = VLMPredictConfig()
    image: ImageAugmentConfig = ImageAugmentConfig()  # the ECG pictures (its section)
    prompt_template: str | None = None  # null = clinlm.methods.vlm.DEFAULT_TEMPLATE
    ecg_text: bool = False              # also give the ECG sentence as text


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
    """Rows ``{"prompt", "image", "answer", "row"}`` -> model inputs + ``labels`` (answer tokens
    only).

    A row's augmentation is drawn from ``(seed, epoch, row)`` (``epoch`` set by the
    :meth:`callback` at each epoch's start), not from a stream the batches share: it does not
    depend on batch composition, prefetching or process count, and a run resumed from a
    checkpoint draws exactly what an uninterrupted run draws."""

    def __init__(self, proc: Any, family: str, image_cfg: dict[str, Any], seed: int) -> None:
        self.proc, self.family = proc, family
        self.augment = bool(image_cfg["augment"])
        self.max_shift = float(image_cfg["max_shift"])
        self.max_scale = float(image_cfg["max_scale"])
        self.seed, self.epoch = int(seed), 0

    def callback(self):  # -> TrainerCallback
        """Keeps ``epoch`` in step with the Trainer's."""
        from transformers import TrainerCallback
        collator = self

        class Epoch(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                collator.epoch = int(round(state.epoch or 0))

        return Epoch()

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tok = self.proc.tokenizer
        images = [load_image(r["image"]) for r in rows]
        if self.augment:
            images = [augment(im, np.random.default_rng([self.seed, self.epoch, int(r["row"])]),
                              self.max_shift, self.max_scale) for im, r in zip(images, rows, strict=True)]
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


def load_vlm(cfg: dict[str, Any], adapter: str | Path | None = None,
             lora: dict[str, Any] | None = None, seed: int | None = None,
             gradient_checkpointing: bool = False) -> tuple[Any, Any, str]:
    """(model, processor, family) of a vlm model entry, through the engine's ``load_model``;
    the processor comes from the trained run's folder when ``adapter`` is given."""
    from clinlm.llm.load import image_text_family, load_model
    from clinlm.llm.tokenizer import load_processor

    model = load_model(cfg, "image_text", adapter=adapter, lora=lora, seed=seed,
                       gradient_checkpointing=gradient_checkpointing)
    return model, load_processor(adapter or cfg["base"]), image_text_family(cfg["base"])


class VLMScorer(Scorer):
    """:class:`Scorer` whose items are ``(prompt text, image)`` pairs: the prompt pass runs the
    image too.

    The digit steps of the numeric decoding are text-only on the prompt's KV cache: the
    language model for token-image models; for Idefics (v1), whose text layers cross-attend
    to the image at every step, the batch's image states are passed again (``decode_step``).
    """

    def __init__(self, model: Any, proc: Any, family: str, batch_size: int = 8,
                 autocast_dtype: str | None = None) -> None:
        super().__init__(model, proc.tokenizer, batch_size, 10**9, autocast_dtype,
                         prefix_cache=False)
        self.proc, self.family = proc, family
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = causal.model
        self._image_states = None
        if family == "idefics":
            self.decoder = self.body  # its attention implementation is the one to read

    def prompt_text(self, item: tuple[str, Any]) -> str:
        return item[0]

    def prompt_batches(self, prompts: list[tuple[str, Any]], desc: str = "scoring",
                       keep_cache: bool = False):
        """As :meth:`Scorer.prompt_batches`; item ``i`` is ``(text, image or image path)``."""
        import torch
        from tqdm.auto import tqdm

        self.tok.padding_side = "left"
        dev = self.device
        with torch.inference_mode(), self.autocast():
            for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="batch"):
                idx = np.arange(start, min(start + self.batch_size, len(prompts)))
                imgs = [load_image(im) if isinstance(im, str | Path) else im
                        for im in (prompts[i][1] for i in idx)]
                enc = {k: v.to(dev) for k, v in
                       encode(self.proc, self.family, [prompts[i][0] for i in idx], imgs).items()}
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
    config = VLMModelConfig
    llm = numeric_answer = True
    task_types = (REGRESSION,)
    table_refusal = "reads ECG pictures"
    ask_refusal = ("the vlm method reads an ECG image per subject, which fields cannot carry")
    library, hub_pipeline = "peft", "image-text-to-text"

    def _prompts_and_images(self, run: Run, df: pd.DataFrame) -> tuple[list[str], list[Path]]:
        cfg = run.cfg
        image_dir = Path(cfg["image"]["dir"] or
                         run.data_dir.parent.parent / "interim" / run.task / "images")
        paths = [image_dir / f"{i}.png" for i in df["id"].astype(str)]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} ECG image(s) missing, e.g. {missing[0]} "
                                    f"(run the render stage; source csv has no recordings)")
        texts = row_texts(df["statement"].tolist(), cfg["ecg_text"])
        return build_prompts(texts, cfg["prompt_template"] or DEFAULT_TEMPLATE), paths

    def train(self, run: Run, train_df: pd.DataFrame) -> dict[str, Any]:
        """Train LoRA (+ ``modules_to_save``) on the answer tokens; save adapter + processor."""
        from clinlm.llm.answer_logits import answer_loss
        from clinlm.llm.fit import fit

        if run.task_type != REGRESSION:
            raise ValueError(f"vlm predicts a number; task {run.task} is {run.task_type}")
        from clinlm.llm.precision import plan
        from clinlm.llm.validation import score_metrics, train_rows

        cfg = run.cfg
        df, val = train_rows(run, train_df)  # the validation slice first, then max_train_rows
        prompts, paths = self._prompts_and_images(run, df)
        plan(None)  # image tokens are counted by the processor, later: `auto` by hardware only
        model, proc, family = load_vlm(
            cfg, lora=cfg["lora"], seed=run.seed,
            gradient_checkpointing=bool(cfg["training"].get("gradient_checkpointing")))
        answers = answer_strings(df["label"], proc.tokenizer)
        rows = [{"prompt": p, "image": str(i), "answer": a, "row": n}
                for n, (p, i, a) in enumerate(zip(prompts, paths, answers, strict=True))]
        base_info = Path(cfg["base"]) / "materialized.json"
        parts = json.loads(base_info.read_text()) if base_info.exists() else {}
        meta = {"family": family, "task_type": run.task_type,
                "pretrained": parts.get("pretrained", ["all (from the base checkpoint)"]),
                "random_init": parts.get("random_init", [])}
        eval_rows, validate = None, None
        if val is not None:  # eval_loss without augmentation; metrics from predict's decoding
            v_prompts, v_paths = self._prompts_and_images(run, val)
            eval_rows = [{"prompt": p, "image": str(i), "answer": a, "row": n} for n, (p, i, a) in
                         enumerate(zip(v_prompts, v_paths,
                                       answer_strings(val["label"], proc.tokenizer), strict=True))]

            def validate(model) -> dict[str, float]:
                scorer = VLMScorer(model, proc, family, cfg["predict"]["batch_size"],
                                   autocast_dtype(cfg))
                return score_metrics(self.predict_with(scorer, run, val), val["label"],
                                     run.task_type)

        collator = VLMCollator(proc, family, cfg["image"], run.seed)
        _, info = fit(run, model, rows, processing_class=proc, loss_fn=answer_loss,
                      data_collator=collator, callbacks=[collator.callback()],
                      remove_unused_columns=False,  # the collator needs the raw rows
                      meta_files={META_FILE: meta}, eval_dataset=eval_rows,
                      eval_data_collator=VLMCollator(proc, family,
                                                     {**cfg["image"], "augment": False}, run.seed),
                      validate=validate)
        info.update(family=family, n_train=len(df), n_train_available=len(train_df),
                    pretrained_parts=meta["pretrained"], random_init_parts=meta["random_init"])
        return info

    def load_scorer(self, run: Run) -> VLMScorer:
        """Base as in training + the saved adapter (folded into the layers when asked)."""
        from clinlm.llm.precision import plan_from_model
        plan_from_model(run.model_dir)  # `auto` precision as in training
        model, proc, family = load_vlm(run.cfg, adapter=run.model_dir)
        return VLMScorer(model, proc, family, run.cfg["predict"]["batch_size"],
                         autocast_dtype(run.cfg))

    def predict_with(self, scorer: VLMScorer, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Numeric decoding of every row with a loaded scorer (the schema of ``predict``)."""
        from clinlm.llm.numeric import decode_numeric

        prompts, paths = self._prompts_and_images(run, df)
        ans = run.task_cfg["answer"]
        strategy = "levels" if scorer.family == "idefics" else "auto"
        est = decode_numeric(scorer, [(p, str(i)) for p, i in zip(prompts, paths, strict=True)],
                             ans["min"], ans["max"], strategy=strategy)
        return pd.DataFrame({"id": df["id"].to_numpy(), **est})

    def predict(self, run: Run, df: pd.DataFrame) -> pd.DataFrame:
        """Load the trained model from ``run.model_dir`` and decode every row."""
        return self.predict_with(self.load_scorer(run), run, df)
