"""The engine (clinlm.llm) on a tiny random Llama: one loss, one normalisation, one layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from clinlm.methods.interface import Run  # noqa: E402
from tests.conftest import YES_NO_TASK, tiny_sft_cfg, waits_rows  # noqa: E402

TASK = YES_NO_TASK
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}



def _df(n: int = 16) -> pd.DataFrame:
    return waits_rows(n)


def test_answer_loss_projects_only_answer_positions(tiny_llama):
    """Same value as the full-vocabulary loss restricted to the answer, through the peft
    wrapper; the model is asked for the answer rows' logits only."""
    import torch.nn.functional as F

    from clinlm.llm.answer_logits import answer_loss
    from clinlm.llm.load import load_model

    cfg = tiny_sft_cfg(tiny_llama)
    model = load_model(Run("t", "classification", "m", cfg, ".", ".").cfg, "causal",
                       lora=cfg["lora"], seed=0)
    ids = torch.randint(3, 500, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5:7], labels[1, 9:12], labels[2, 2] = ids[0, 5:7], ids[1, 9:12], ids[2, 2]
    seen: list = []
    model.register_forward_hook(lambda m, a, out: seen.append(out.logits.shape) and None)
    total, n = answer_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                   "labels": labels})
    full = model(input_ids=ids).logits[:, :-1]
    want = F.cross_entropy(full.reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")
    assert n == 6 and seen[0] == (6, full.shape[-1])  # 6 answer rows projected, not 3 x 12
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)


def _train_lora(tiny_llama, tmp_path, name, batch, accumulation):
    """float64 (fp32 rounding of the 49k-way softmax would blur a 1e-5 comparison)."""
    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, dtype="float64")
    cfg["training"].update(per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulation, learning_rate=0.05,
                           lr_scheduler_type="constant", optim="sgd")
    ages = [7, 104, 55, 9, 101, 33, 8, 99, 61, 110, 5, 47, 102, 6, 73, 100]  # 1-3 digits
    df = pd.DataFrame({"id": [str(i) for i in range(16)], "group": [str(i) for i in range(16)],
                       "statement": [f"Case {i}." for i in range(16)], "label": ages})
    run = Run("vascular_age", "regression", name, cfg, tmp_path / name, tmp_path, seed=3,
              task_cfg=TASK)
    SFTMethod().train(run, df)
    from safetensors.torch import load_file
    return load_file(str(tmp_path / name / "adapter_model.safetensors"))


def test_gradient_accumulation_gives_the_same_update(tiny_llama, tmp_path):
    """Answers of 2-4 tokens: batch 8 == batch 4 x 2 accumulation steps, because the loss is
    divided by the optimizer step's answer-token count (a per-micro-batch mean would not be)."""
    a = _train_lora(tiny_llama, tmp_path, "b8", 8, 1)
    b = _train_lora(tiny_llama, tmp_path, "b4x2", 4, 2)
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-7, atol=1e-10)
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # it did train


def test_qlora_adapters_train_in_the_compute_dtype(tiny_llama):
    """TRL casts QLoRA adapters to bf16; the engine keeps the bnb compute dtype."""
    from clinlm.llm.fit import adapter_dtype
    cfg = tiny_sft_cfg(tiny_llama, bnb=NF4)
    assert adapter_dtype(cfg) == torch.float32
    assert adapter_dtype({**cfg, "bnb": {**NF4, "bnb_4bit_compute_dtype": "bfloat16"}}) == torch.bfloat16
    assert adapter_dtype(tiny_sft_cfg(tiny_llama)) is None  # not quantized: peft's fp32


def test_qlora_train_info_and_adapter_dtype(tiny_llama, tmp_path):
    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, bnb=NF4)
    run = Run("noshow", "classification", "q", cfg, tmp_path / "q", tmp_path, seed=1, task_cfg=TASK)
    info = SFTMethod().train(run, _df(8))
    assert info["world_size"] == 1 and info["steps"] == 1 and info["tokens_per_second"] > 0
    assert info["peak_memory_gib"]["rank0"]["cpu_rss"] > 0  # the stage moves it to timing/
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "q" / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert not (tmp_path / "q" / "training_args.bin").exists()  # no pickle in the model folder
    assert (tmp_path / "q" / "resolved_config.json").exists()


def test_kbit_layout_is_the_same_for_training_and_scoring(tiny_llama, tmp_path):
    """The non-quantized weights (norms, embeddings) get the same dtype in both paths."""
    from clinlm.llm.load import load_model
    cfg = Run("t", "classification", "m", tiny_sft_cfg(tiny_llama, bnb=NF4, dtype="bfloat16"),
              ".", ".").cfg
    train = load_model(cfg, "causal", lora=cfg["lora"], seed=0)
    train.save_pretrained(tmp_path / "a")
    score = load_model({**cfg, "predict": {**cfg["predict"], "merge_adapter": False}}, "causal",
                       adapter=tmp_path / "a")
    def dtypes(m):
        return {n.split("base_model.model.")[-1]: p.dtype for n, p in m.named_parameters()
                if "norm" in n}
    assert dtypes(train) == dtypes(score) and set(dtypes(score).values()) == {torch.float32}
    with pytest.raises(ValueError, match="not both"):
        load_model(cfg, "causal", adapter=tmp_path / "a", lora=cfg["lora"])
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(cfg, "seq2seq")


def test_defaults_come_from_the_typed_config(tiny_llama):
    cfg = tiny_sft_cfg(tiny_llama)
    del cfg["predict"]
    run = Run("t", "regression", "m", cfg, ".", ".", task_cfg={})
    assert run.cfg["predict"] == {"batch_size": 32, "max_length": 256, "autocast_dtype": None,
                                  "merge_adapter": True, "prefix_cache": True, "engine": "hf",
                                  "vllm": {}}
    assert run.cfg["launch"]["num_processes"] == 1
    assert run.task_cfg["answer"] == {"min": 18, "max": 110, "decimals": 0, "labels": None}
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="batch_sise"):
        Run("t", "regression", "m", {**cfg, "predict": {"batch_sise": 2}}, ".", ".")


def test_vllm_engine_scores_like_the_hf_scorer(tiny_llama, tmp_path):
    """predict.engine: vllm agrees with the HF scorer (needs vllm and a CUDA GPU)."""
    pytest.importorskip("vllm", reason="vllm is not installed (GPU-only engine)")
    if not torch.cuda.is_available():
        pytest.skip("predict.engine: vllm needs a CUDA GPU; this machine has none")
    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1)
    run = Run("noshow", "classification", "v", cfg, tmp_path / "v", tmp_path, seed=1,
              task_cfg=TASK, work_dir=tmp_path / "work")
    SFTMethod().train(run, _df(16))
    hf = SFTMethod().predict(run, _df(32))
    run.cfg["predict"]["engine"] = "vllm"
    vl = SFTMethod().predict(run, _df(32))
    assert np.abs(hf["p_yes"] - vl["p_yes"]).max() < 0.02
    assert ((hf["p_yes"] >= 0.5) == (vl["p_yes"] >= 0.5)).mean() >= 0.99


def test_sharded_training_needs_the_quant_storage_dtype(tiny_llama, tmp_path):
    """FSDP / ZeRO-3 shard one dtype per unit: a 4-bit base must be stored in it."""
    import json

    from clinlm.llm.load import load_model, sharded_training
    ds3 = tmp_path / "z3.json"
    ds3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert sharded_training({"fsdp": "full_shard auto_wrap"})
    assert sharded_training({"deepspeed": str(ds3)})
    assert not sharded_training({"deepspeed": {"zero_optimization": {"stage": 2}}})
    assert not sharded_training({})
    cfg = Run("t", "classification", "m", tiny_sft_cfg(tiny_llama, bnb=NF4), ".", ".").cfg
    cfg["training"]["fsdp"] = "full_shard auto_wrap"
    with pytest.raises(ValueError, match="bnb_4bit_quant_storage"):
        load_model(cfg, "causal", lora=cfg["lora"])


def test_repo_launch_configs_parse():
    import json

    from tests.conftest import ROOT
    for path in (ROOT / "configs").rglob("*.json"):
        json.loads(path.read_text())
    z3 = json.loads((ROOT / "configs/deepspeed/zero3.json").read_text())
    assert z3["zero_optimization"]["stage"] == 3


def test_adapter_config_bytes_do_not_depend_on_the_hash_seed(tiny_llama, tmp_path):
    """peft writes target_modules from a set; the engine sorts them, so a retrain with the
    same seed and data gives the same model folder (and DVC hash)."""
    import json

    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1)
    cfg["lora"]["target_modules"] = ["v_proj", "q_proj", "o_proj", "k_proj"]
    run = Run("noshow", "classification", "s", cfg, tmp_path / "s", tmp_path, seed=1,
              task_cfg=TASK)
    SFTMethod().train(run, _df(8))
    saved = json.loads((tmp_path / "s" / "adapter_config.json").read_text())
    assert saved["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
