"""The vlm method on tiny models of both families, built from configs on CPU.

* Idefics3 (the token-image family, AutoModelForImageTextToText): composed by
  ``compose_idefics3`` around the tiny random Llama exactly as the CPU default is composed
  around SmolLM2, so the composition itself is tested too.
* Idefics (v1, IdeficsForVisionText2Text, gated cross-attention): the seed's family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clinlm.methods.interface import Run
from clinlm.methods.vlm import VLMMethod, augment, build_prompts, row_texts
from tests.conftest import ROOT

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 64, "patch_size": 16}


@pytest.fixture(scope="session")
def tiny_idefics3(tiny_llama, tmp_path_factory) -> Path:
    from clinlm.vlm_base import compose_idefics3

    out = tmp_path_factory.mktemp("vlm") / "idefics3"
    compose_idefics3(tiny_llama, out, TINY_VISION, scale_factor=2, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_idefics(tiny_llama, tmp_path_factory) -> Path:
    """A 2-layer Idefics (v1) with a 1-layer ViT and cross-attention every layer, no resampler."""
    import torch
    from transformers import AutoTokenizer, IdeficsConfig, IdeficsForVisionText2Text, IdeficsProcessor
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

    out = tmp_path_factory.mktemp("vlm") / "idefics"
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>"]})
    torch.manual_seed(0)
    cfg = IdeficsConfig(vocab_size=len(tok), additional_vocab_size=0, hidden_size=64,
                        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        cross_layer_interval=1, use_resampler=False, qk_layer_norms=False,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id,
                        vision_config={"embed_dim": 32, "image_size": 32, "patch_size": 16,
                                       "num_hidden_layers": 1, "num_attention_heads": 2,
                                       "intermediate_size": 64})
    model = IdeficsForVisionText2Text(cfg)
    with torch.no_grad():  # open the cross-attention gates (zero at init: the image is unseen)
        for name, p in model.named_parameters():
            if "alpha_" in name:
                p.fill_(0.5)
    model.save_pretrained(out)
    IdeficsProcessor(IdeficsImageProcessorPil(image_size=32), tok, image_size=32).save_pretrained(out)
    return out


def ecg_like(path: Path, age: float, size=(96, 64)) -> None:
    """A white picture with a dark trace whose height encodes ``age`` (learnable from pixels)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    y = int(size[1] * (0.9 - 0.8 * (age - 20) / 70))
    ImageDraw.Draw(img).line([(0, y), (size[0], y)], fill=(0, 0, 0), width=3)
    img.save(path)


@pytest.fixture
def vlm_rows(tmp_path) -> tuple[pd.DataFrame, Path]:
    rng = np.random.default_rng(0)
    ages = rng.integers(25, 85, size=12).astype(float)
    images = tmp_path / "images"
    images.mkdir()
    for i, a in enumerate(ages):
        ecg_like(images / f"s{i}.png", a)
    df = pd.DataFrame({"id": [f"s{i}" for i in range(len(ages))], "label": ages,
                       "statement": [f"A {'man' if i % 2 else 'woman'}. ECG: heart rate {60 + i} bpm."
                                     for i in range(len(ages))]})
    return df, images


def vlm_cfg(base: Path, images: Path, **lora) -> dict:
    return {"method": "vlm", "base": str(base), "dtype": "float32", "max_train_rows": None,
            "bnb": {"load_in_4bit": False}, "ecg_text": False,
            "image": {"augment": True, "max_shift": 0.02, "max_scale": 0.05, "dir": str(images)},
            "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **lora},
            "training": {"num_train_epochs": 6, "per_device_train_batch_size": 4,
                         "learning_rate": 0.01, "logging_steps": 1, "save_strategy": "no",
                         "report_to": "none"},
            "predict": {"batch_size": 4, "autocast_dtype": None}}


def make_run(tmp_path: Path, cfg: dict) -> Run:
    return Run(task="vascular_age", task_type="regression", model="tiny-vlm", cfg=cfg,
               model_dir=tmp_path / "model", data_dir=tmp_path / "processed", seed=0,
               task_cfg={"answer": {"min": 18, "max": 110}})


@pytest.mark.parametrize("family", ["idefics3", "idefics"])
def test_vlm_trains_with_falling_loss_and_predicts(family, tiny_idefics3, tiny_idefics,
                                                  vlm_rows, tmp_path):
    df, images = vlm_rows
    base = tiny_idefics3 if family == "idefics3" else tiny_idefics
    lora = ({"target_modules": ".*text_model.*\\.(q_proj|v_proj)",
             "modules_to_save": ["vision_model", "connector"]} if family == "idefics3"
            else {"target_modules": ["q_proj", "k_proj", "v_proj"]})
    run = make_run(tmp_path, vlm_cfg(base, images, **lora))
    method = VLMMethod()
    info = method.train(run, df)
    assert info["family"] == ("auto" if family == "idefics3" else "idefics")
    assert info["last_loss"] < info["first_loss"]
    if family == "idefics3":  # the composed base says which parts were pretrained
        assert info["pretrained_parts"] == ["text_model", "lm_head"]
        assert info["random_init_parts"] == ["vision_model", "connector"]
    pred = method.predict(run, df)
    assert list(pred["id"]) == list(df["id"])
    assert np.isfinite(pred["y_pred"]).all() and pred["y_pred"].between(18, 110).all()
    assert (pred["y_lo"] <= pred["y_pred"]).all() and (pred["y_pred"] <= pred["y_hi"]).all()


@pytest.mark.parametrize("family", ["idefics3", "idefics"])
def test_the_image_reaches_the_model(family, tiny_idefics3, tiny_idefics, tmp_path):
    """Same text, another picture: the answer distribution changes."""
    from clinlm.llm.numeric import number_probs
    from clinlm.methods.vlm import VLMScorer, load_vlm

    base = tiny_idefics3 if family == "idefics3" else tiny_idefics
    model, proc, fam = load_vlm({"base": str(base), "dtype": "float32"})
    scorer = VLMScorer(model, proc, fam, batch_size=2)
    ecg_like(tmp_path / "a.png", 30)
    ecg_like(tmp_path / "b.png", 80)
    prompt = build_prompts(["A man."], "{image}{text} Age: ")[0]
    items = [(prompt, str(tmp_path / name)) for name in ("a.png", "b.png", "a.png")]
    strategy = "levels" if fam == "idefics" else "auto"
    _, p = number_probs(scorer, items, 18, 40, strategy=strategy)
    assert np.abs(p[0] - p[2]).max() < 1e-6  # same picture, same answer (padding-proof)
    assert np.abs(p[0] - p[1]).max() > 1e-4


def test_composed_idefics3_keeps_the_pretrained_text_weights(tiny_llama, tiny_idefics3):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vlm = AutoModelForImageTextToText.from_pretrained(tiny_idefics3)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        a = vlm.model.text_model(input_ids=ids).last_hidden_state
        b = lm.model(input_ids=ids).last_hidden_state
    assert torch.equal(a, b)
    info = json.loads((tiny_idefics3 / "materialized.json").read_text())
    assert info["image_seq_len"] == (64 // 16) ** 2 // 2 ** 2


def test_augmentation_shifts_and_zooms_but_never_flips():
    from PIL import Image

    img = Image.new("RGB", (100, 50), "white")
    img.putpixel((20, 10), (0, 0, 0))
    same = augment(img, np.random.default_rng(0), max_shift=0.0, max_scale=0.0)
    assert np.array_equal(np.asarray(same), np.asarray(img))
    for seed in range(5):
        out = np.asarray(augment(img, np.random.default_rng(seed), max_shift=0.05, max_scale=0.05))
        ys, xs = np.nonzero(out.sum(-1) < 600)
        assert len(xs) and abs(xs.mean() - 20) <= 8 and abs(ys.mean() - 10) <= 5  # no mirror
        assert out[0, -1].tolist() == [255, 255, 255]  # new area is paper-white


def test_prompt_text_and_template():
    texts = row_texts(["A man, 50 kg. ECG: heart rate 70 bpm."], ecg_text=False)
    assert texts == ["A man, 50 kg."]
    assert row_texts(["A man. ECG: x."], ecg_text=True) == ["A man. ECG: x."]
    with pytest.raises(ValueError, match="exactly one"):
        build_prompts(texts, "{text} without a picture")


def test_seed_idefics9b_preset_builds_the_seed_bnb_config():
    from clinlm.llm.builders import build_bnb_config, build_lora_config

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = params["models"]["idefics-9b"]
    assert preset["base"] == "data/models/base/idefics-9b"
    bnb = build_bnb_config(preset["bnb"])
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.llm_int8_skip_modules == ["lm_head", "embed_tokens"]
    lora = build_lora_config(preset["lora"])
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj"}
    assert preset["training"]["optim"] == "paged_adamw_8bit"


def test_runs_sit_in_their_method_group_with_their_base():
    """A run's group is its model's method (its stages depend on that method's code), and an
    LLM run names the base folder its model loads (a dependency of its stages)."""
    from clinlm.params import ParamsError, validate

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"]["sft"]["bad"] = {"task": "vascular_age", "model": "smolvlm-ecg",
                                    "base": "smolvlm-ecg"}
    with pytest.raises(ParamsError, match=r"runs\.sft\.bad: model 'smolvlm-ecg' is method 'vlm'"):
        validate(params)
    del params["runs"]["sft"]["bad"]
    params["runs"]["vlm"]["v"] = {"task": "vascular_age", "model": "smolvlm-ecg"}
    with pytest.raises(ParamsError, match=r"runs\.vlm\.v\.base"):
        validate(params)
    params["runs"]["vlm"]["v"]["base"] = "smollm2-135m-instruct"
    with pytest.raises(ParamsError, match="expected data/models/base/smollm2-135m-instruct"):
        validate(params)
    params["runs"]["vlm"]["v"]["base"] = "smolvlm-ecg"
    validate(params)
    params["runs"]["gbdt"]["v"] = {"task": "noshow", "model": "gbdt"}
    with pytest.raises(ParamsError, match="also in runs.vlm"):
        validate(params)


@pytest.mark.slow
def test_ddp_vlm_trains_once_and_only_rank0_writes(tiny_idefics3, vlm_rows, tmp_path):
    """2 CPU processes under torchrun (gloo): the image collator and answer loss under DDP."""
    from tests.conftest import run_distributed

    df, images = vlm_rows
    cfg = vlm_cfg(tiny_idefics3, images, target_modules=".*text_model.*\\.(q_proj|v_proj)",
                  modules_to_save=["vision_model", "connector"])
    cfg["training"].update(per_device_train_batch_size=3, num_train_epochs=8)
    run = make_run(tmp_path, cfg)
    ranks = run_distributed(tmp_path, {k: getattr(run, k) for k in
                                       ("task", "task_type", "model", "model_dir", "data_dir",
                                        "seed", "task_cfg")} | {"cfg": cfg}, df)
    info = ranks[0]["info"]
    assert info["world_size"] == 2 and info["steps"] == 16  # 12 rows / (2 x 3) x 8 epochs
    assert info["last_loss"] < info["first_loss"]
    assert ranks[0]["written"] and not ranks[1]["written"]
    assert (run.model_dir / "adapter_model.safetensors").exists()


def test_vlm_validation_through_the_shared_path(tiny_idefics3, vlm_rows, tmp_path):
    """A validation slice: eval_loss from the unaugmented collator, eval_mae from predict's
    numeric decoding (VLMScorer) on the model being trained."""
    df, images = vlm_rows
    cfg = vlm_cfg(tiny_idefics3, images, target_modules=".*text_model.*\\.(q_proj|v_proj)",
                  modules_to_save=["vision_model", "connector"])
    cfg["validation"] = {"rows": 5}  # >= one row per target quintile (stratified)
    cfg["training"].update(num_train_epochs=2, eval_strategy="epoch")
    info = VLMMethod().train(make_run(tmp_path, cfg), df)
    v = info["validation"]
    assert v["rows"] == 5 and info["n_train"] == 7 and v["evaluations"] == 2
    assert np.isfinite(v["last"]["eval_mae"]) and np.isfinite(v["last"]["eval_loss"])
