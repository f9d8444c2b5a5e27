"""``training.torch_compile`` with ``dynamo.use_regional_compilation``: the decoder layers
are compiled in place (clinlm.llm.compile.compile_repeated_blocks), the run trains the same model
as without compilation, and bad keys fail with the key named."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from clinlm.llm import compile as F  # noqa: E402
from clinlm.methods.interface import Run  # noqa: E402
from tests.conftest import YES_NO_TASK, tiny_sft_cfg, waits_rows  # noqa: E402


def test_unknown_dynamo_key_is_named():
    with pytest.raises(ValueError, match=r"dynamo\.use_regional\b.*TorchDynamoPlugin"):
        F.resolve_compile({"use_regional": True}, {"torch_compile": True}, None)
    with pytest.raises(ValueError, match=r"dynamo\.backend.*torch_compile_backend"):
        F.resolve_compile({"backend": "inductor"}, {}, None)
    with pytest.raises(ValueError, match=r"training\.torch_compile is 'yes'"):
        F.resolve_compile({}, {"torch_compile": "yes"}, None)


DYN = {"use_regional_compilation": True, "dynamic": True}


def test_compile_is_on_as_in_training_arguments(monkeypatch):
    assert F.resolve_compile(DYN, {"torch_compile": False}, 10**9) is None
    assert F.resolve_compile(DYN, {}, 10**9) is None
    # as TrainingArguments: a mode (or a backend) alone switches it on
    assert F.resolve_compile(DYN, {"torch_compile_mode": "max-autotune"}, None) == {
        "requested": True, "backend": "inductor", "mode": "max-autotune", **DYN}
    monkeypatch.setattr(F, "device", lambda: "cpu")
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"training\.torch_compile.*g\+\+"):
        F.resolve_compile(DYN, {"torch_compile": True}, None)
    assert F.resolve_compile(DYN, {"torch_compile": True, "torch_compile_backend": "eager"}, None)


def test_auto_compiles_long_cpu_runs_only(monkeypatch):
    monkeypatch.setattr(F, "device", lambda: "cpu")
    monkeypatch.setattr(F.shutil, "which", lambda name: "/usr/bin/g++")
    auto = {"torch_compile": "auto"}
    big = F.AUTO_COMPILE_MIN_TOKENS
    assert F.resolve_compile(DYN, auto, big - 1) is None          # the default make repro run
    assert F.resolve_compile(DYN, auto, None) is None
    on = F.resolve_compile(DYN, auto, big)
    assert on["requested"] == "auto" and on["backend"] == "inductor" and "planned tokens" in on["reason"]
    assert F.resolve_compile({"use_regional_compilation": False}, auto, 10 * big) is None
    monkeypatch.setattr(F.shutil, "which", lambda name: None)     # auto never fails: off
    assert F.resolve_compile(DYN, auto, 10 * big) is None
    monkeypatch.setattr(F, "device", lambda: "cuda")
    assert F.resolve_compile(DYN, auto, 10 * big) is None


def test_planned_tokens():
    assert F.planned_tokens({"num_train_epochs": 2}, 1000, 10) == 2000
    # 5 steps x 4 rows x 2 accumulation x 2 processes = 80 rows of 100 tokens
    assert F.planned_tokens({"max_steps": 5, "per_device_train_batch_size": 4,
                             "gradient_accumulation_steps": 2}, 1000, 10, world_size=2) == 8000
    assert F.planned_tokens({}, None, 10) is None


def _train(tmp_path, tiny_llama, name: str, **training):
    from safetensors.torch import load_file

    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, dynamo={"use_regional_compilation": True,
                                                     "dynamic": True})
    cfg["training"].update(training, max_steps=3, per_device_train_batch_size=4)
    run = Run("noshow", "classification", "m", cfg, tmp_path / name, tmp_path / name, seed=0,
              task_cfg=YES_NO_TASK)
    info = SFTMethod().train(run, waits_rows(16))
    return run, info, load_file(str(run.model_dir / "adapter_model.safetensors"))


def test_regional_compile_trains_the_same_model(tmp_path, tiny_llama, monkeypatch):
    """Dynamo + AOTAutograd through the real Trainer path (backend ``aot_eager``: the graphs
    the engine hands to a backend, without inductor's ~40 s of C++ builds per test; inductor
    itself runs in bench/precision.py)."""
    import torch._dynamo.utils

    from clinlm.methods.sft import SFTMethod
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    _, eager, w_eager = _train(tmp_path, tiny_llama, "eager", torch_compile="auto")
    assert eager["torch_compile"] is None  # auto: 3 steps are far too few to pay for a compile

    before = torch._dynamo.utils.counters["frames"]["ok"]
    run, compiled, w_comp = _train(tmp_path, tiny_llama, "compiled", torch_compile=True,
                                   torch_compile_backend="aot_eager")
    assert torch._dynamo.utils.counters["frames"]["ok"] > before  # dynamo really compiled
    assert compiled["torch_compile"] == {"requested": True, "backend": "aot_eager", "mode": "default",
                                         "use_regional_compilation": True, "dynamic": True,
                                         "blocks": 2}  # the tiny Llama's two decoder layers
    # compiled here, not by the Trainer: nothing exported for later runs in this process
    assert "ACCELERATE_DYNAMO_BACKEND" not in os.environ
    # in place: the adapter has the same tensors, and the same training in float32
    assert w_comp.keys() == w_eager.keys()
    assert compiled["first_loss"] == pytest.approx(eager["first_loss"], rel=1e-3)
    for key, w in w_eager.items():
        torch.testing.assert_close(w_comp[key], w, rtol=2e-2, atol=2e-3)
    p = SFTMethod().predict(run, waits_rows(4))["p_yes"].to_numpy()
    assert ((p > 0) & (p < 1)).all()


def test_head_method_compiles_too(tmp_path, tiny_llama):
    from clinlm.methods.head import HeadMethod
    cfg = {"method": "head", "base": str(tiny_llama), "max_train_rows": None, "bnb": {},
           "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "task_type": "SEQ_CLS",
                    "target_modules": ["q_proj", "v_proj"]},
           "dynamo": {"use_regional_compilation": True, "dynamic": True},
           "training": {"per_device_train_batch_size": 8, "max_steps": 2, "learning_rate": 1e-2,
                        "logging_steps": 1, "save_strategy": "no", "report_to": "none",
                        "torch_compile": True, "torch_compile_backend": "aot_eager"},
           "predict": {"batch_size": 8, "max_length": 64}}
    run = Run("noshow", "classification", "h", cfg, tmp_path / "h", tmp_path / "h", seed=0,
              task_cfg=YES_NO_TASK)
    info = HeadMethod().train(run, waits_rows(16))
    assert info["torch_compile"]["blocks"] == 2 and info["steps"] == 2
    p = HeadMethod().predict(run, waits_rows(4))["p_yes"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
