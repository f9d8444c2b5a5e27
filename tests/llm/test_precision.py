"""`auto` precision (clinlm.llm.precision): the decision per machine, where params accept it,
and a 4-bit LoRA run trained and scored in the bf16 it resolves to; the loss_rose flag."""

from __future__ import annotations

import logging
from types import MappingProxyType

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from clinlm.llm import precision as P  # noqa: E402
from clinlm.methods.interface import Run  # noqa: E402
from tests.conftest import YES_NO_TASK, tiny_sft_cfg, waits_rows  # noqa: E402

AVX2 = {"avx": True, "avx2": True, "fma3": True, "avx512_f": False, "avx512_bf16": False,
        "amx_tile": False, "amx_bf16": False, "cpu_name": "AMD EPYC 7B12"}
ZEN5 = {**AVX2, "avx512_f": True, "avx512_bf16": True, "cpu_name": "AMD EPYC"}
SAPPHIRE = {**AVX2, "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True,
            "cpu_name": "Intel(R) Xeon(R) Platinum 8480+"}
AUTO_CFG = {"dtype": "auto", "bnb": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "auto"},
            "training": {"bf16": "auto", "learning_rate": 0.1},
            "predict": {"autocast_dtype": "auto", "merge_adapter": True}}


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a CPU with the given torch capabilities (no env override, fresh cache)."""
    monkeypatch.delenv(P.ENV, raising=False)

    def use(caps: dict) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps))
        P._detect.cache_clear()

    P.clear_plan()
    yield use
    P._detect.cache_clear()
    P.clear_plan()


@pytest.mark.parametrize(("caps", "dtype", "reason"), [
    (AVX2, "float32", "cpu avx2 without avx512_bf16/amx_bf16 (bf16 emulated)"),
    ({**AVX2, "avx512_f": True}, "float32", "cpu avx512 without avx512_bf16/amx_bf16 (bf16 emulated)"),
    (ZEN5, "bfloat16", "cpu avx512_bf16"),
    (SAPPHIRE, "bfloat16", "cpu amx_bf16"),
])
def test_cpu_decision_follows_the_flags(machine, caps, dtype, reason):
    machine(caps)
    assert P.resolve("cpu") == (dtype, reason)
    assert P.resolve_precision(torch.device("cpu")) == dtype


def test_cuda_decision_needs_native_bf16(monkeypatch, machine):
    machine(AVX2)  # the host CPU must not matter
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    native = {"v": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native["v"] or including_emulation)
    assert P.resolve("cuda:0") == ("bfloat16", "cuda bf16 (NVIDIA H200)")
    native["v"] = False  # a V100: bf16 only emulated, which must not count
    P._detect.cache_clear()
    assert P.resolve(torch.device("cuda", 0))[0] == "float32"


def test_short_cpu_runs_plan_float32(machine, monkeypatch, tmp_path):
    """`auto` on a bf16-fast CPU: float32 below AUTO_BF16_MIN_TOKENS planned tokens (the same
    metrics on every CPU), bf16 from there; AVX2 and GPUs unchanged; the env still wins;
    prediction follows the size its training recorded."""
    import json
    machine(ZEN5)
    n = P.AUTO_BF16_MIN_TOKENS
    P.plan(n - 1)
    assert P.resolve("cpu") == ("float32", f"{n - 1:,} planned tokens < {n:,}: float32, the "
                                           f"same on every CPU (cpu avx512_bf16 would be bf16)")
    rep = P.report(AUTO_CFG, "cpu")
    assert rep["resolved"] == "float32" and rep["planned_tokens"] == n - 1
    assert set(rep["keys"].values()) == {"float32", False}
    P.plan(n)
    assert P.resolve("cpu") == ("bfloat16", f"cpu avx512_bf16, {n:,} planned tokens >= {n:,}")
    P.plan_training({"num_train_epochs": 2}, n_tokens=n // 2, n_rows=10)  # 2 epochs: n tokens
    assert P.resolve_precision("cpu") == "bfloat16"
    P.plan_training({"max_steps": 5, "per_device_train_batch_size": 2}, n_tokens=n, n_rows=100)
    assert P.resolve_precision("cpu") == "float32"  # 10 of 100 rows: n / 10 tokens
    P.plan(None)
    assert P.resolve("cpu") == ("bfloat16", "cpu avx512_bf16")  # size unknown: the hardware's
    P.plan(10)
    monkeypatch.setenv(P.ENV, "bfloat16")
    assert P.resolve_precision("cpu") == "bfloat16"
    monkeypatch.delenv(P.ENV)
    machine(AVX2)
    P.plan(n * 10)
    assert P.resolve_precision("cpu") == "float32"  # bf16 emulated: never
    (tmp_path / "train_info.json").write_text(json.dumps({"precision": {"planned_tokens": 17}}))
    machine(SAPPHIRE)
    P.plan_from_model(tmp_path)
    assert P.resolve_precision("cpu") == "float32"
    P.plan_from_model(tmp_path / "elsewhere")  # no record: the hardware decides
    assert P.resolve_precision("cpu") == "bfloat16"


def test_env_override(monkeypatch, machine):
    machine(AVX2)
    monkeypatch.setenv(P.ENV, "bfloat16")
    assert P.resolve("cpu") == ("bfloat16", "env CLINLM_PRECISION=bfloat16")
    machine(SAPPHIRE)
    monkeypatch.setenv(P.ENV, "float32")
    assert P.resolve_precision("cpu") == "float32"
    monkeypatch.setenv(P.ENV, "auto")
    assert P.resolve_precision("cpu") == "bfloat16"
    monkeypatch.setenv(P.ENV, "fp16")
    with pytest.raises(ValueError, match="CLINLM_PRECISION='fp16'"):
        P.resolve("cpu")


def test_every_auto_key_resolves_and_reaches_its_library_object(machine):
    from clinlm.llm.builders import build_bnb_config, build_training_kwargs, resolve_dtype
    from clinlm.llm.fit import adapter_dtype
    from clinlm.llm.scorer import autocast_dtype

    machine(ZEN5)
    assert P.resolve_cfg(AUTO_CFG, "cpu") == {
        "dtype": "bfloat16", "bnb": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"},
        "training": {"bf16": True, "learning_rate": 0.1},
        "predict": {"autocast_dtype": "bfloat16", "merge_adapter": True}}
    assert build_bnb_config(AUTO_CFG["bnb"]).bnb_4bit_compute_dtype == torch.bfloat16
    assert build_training_kwargs(AUTO_CFG["training"], "out", 1)["bf16"] is True
    assert resolve_dtype("auto") == torch.bfloat16 and adapter_dtype(AUTO_CFG) == torch.bfloat16
    assert autocast_dtype(AUTO_CFG) == "bfloat16"
    rep = P.report(AUTO_CFG)
    assert rep["requested"] == "auto" and rep["resolved"] == "bfloat16"
    assert rep["reason"] == "cpu avx512_bf16" and rep["keys"]["training.bf16"] is True

    machine(AVX2)
    assert build_training_kwargs(AUTO_CFG["training"], "out", 1)["bf16"] is False
    assert build_bnb_config(AUTO_CFG["bnb"]).bnb_4bit_compute_dtype == torch.float32
    assert adapter_dtype(AUTO_CFG) == torch.float32 and autocast_dtype(AUTO_CFG) is None
    assert P.report(AUTO_CFG)["keys"] == {"dtype": "float32",
                                          "bnb.bnb_4bit_compute_dtype": "float32",
                                          "training.bf16": False,
                                          "predict.autocast_dtype": "float32"}
    explicit = P.report({"dtype": "bfloat16", "bnb": {"bnb_4bit_compute_dtype": "bfloat16"},
                         "training": {"bf16": True}})
    assert explicit["requested"] == "explicit" and explicit["resolved"] == "bfloat16"
    with pytest.raises(ValueError, match="only accepted for"):
        P.resolve_value("bnb", "bnb_4bit_quant_storage", "auto")
    # a 4-bit base merged into bf16 layers needs autocast (fp32 norms feed them), even when
    # the params ask for none
    merged_bf16 = {"dtype": "bfloat16", "bnb": {"load_in_4bit": True},
                   "predict": {"autocast_dtype": None, "merge_adapter": True}}
    assert autocast_dtype(merged_bf16) == "bfloat16"
    assert autocast_dtype({**merged_bf16, "predict": {"merge_adapter": False}}) is None


def test_params_accept_auto_exactly_where_allowed():
    from pydantic import ValidationError

    from clinlm.llm.config import LLMConfig, PredictConfig
    from clinlm.params import ParamsError, validate_library_section

    validate_library_section("m.training", "training", {"bf16": "auto", "bf16_full_eval": False})
    validate_library_section("m.bnb", "bnb", {"load_in_4bit": True, "bnb_4bit_compute_dtype": "auto"})
    validate_library_section("m.training", "training",  # the GPU levers pass the check
                             {"auto_find_batch_size": True, "use_liger_kernel": True})
    for kind, section in [("training", {"fp16": "auto"}), ("training", {"learning_rate": "auto"}),
                          ("bnb", {"bnb_4bit_quant_storage": "auto"}),
                          ("lora", {"r": "auto"})]:
        with pytest.raises(ParamsError, match="`auto` precision is accepted only for"):
            validate_library_section(f"m.{kind}", kind, section)
    LLMConfig(method="sft", base="b", lora={}, dtype="auto", predict={"autocast_dtype": "auto"})
    with pytest.raises(ValidationError, match="not a dtype"):
        LLMConfig(method="sft", base="b", lora={}, dtype="bfloat17")
    with pytest.raises(ValidationError, match="not a dtype"):
        PredictConfig(autocast_dtype="bf16")


def test_params_yaml_presets_pass_the_library_check():
    """The CPU defaults' `auto` keys and the 80 GB GPU preset pass the library check."""
    from ruamel.yaml import YAML

    from clinlm.params import validate_library_section
    from tests.conftest import ROOT

    models = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())["models"]
    for name in ("smollm2-sft", "smollm2-head", "llama31-8b-sft-80gb"):
        for kind in ("bnb", "lora", "training"):
            validate_library_section(f"models.{name}.{kind}", kind, models[name][kind])
    big = models["llama31-8b-sft-80gb"]["training"]
    assert (big["per_device_train_batch_size"], big["gradient_accumulation_steps"]) == (32, 1)
    assert big["gradient_checkpointing"] is False and big["bf16"] is True


def test_loss_trend_flags_a_rising_loss():
    from clinlm.llm.fit import loss_trend

    def hist(*losses):
        return [{"loss": x, "step": i} for i, x in enumerate(losses)] + [{"train_runtime": 1.0}]

    rising = loss_trend(hist(1.0, 0.8, 0.9, 1.2, 1.4, 1.3, 2.0))
    assert rising == {"loss_rose": True, "first_loss_mean": 0.9, "last_loss_mean": 1.566667}
    assert loss_trend(hist(2.0, 1.5, 1.0, 0.9))["loss_rose"] is False
    assert loss_trend(hist(1.0, 1.1))["loss_rose"] is True  # one point each side
    assert loss_trend(hist(1.0))["loss_rose"] is None and loss_trend([])["loss_rose"] is None


def _auto_run(tiny_llama, tmp_path, name, **extra) -> Run:
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, dtype="auto", **extra)
    cfg["bnb"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                  "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "auto"}
    cfg["training"].update(bf16="auto", per_device_train_batch_size=4, learning_rate=0.003)
    cfg["predict"]["autocast_dtype"] = "auto"
    cfg.update(attn_implementation="auto", non_quantized_dtype="auto")  # the CPU presets'
    return Run("noshow", "classification", name, cfg, tmp_path / name, tmp_path, seed=1,
               task_cfg=YES_NO_TASK)


def test_auto_trains_and_predicts_in_bf16(tiny_llama, tmp_path, monkeypatch, caplog):
    """auto -> bf16 (forced: CI CPUs may be AVX2): QLoRA trains with bf16 adapters and
    autocast, train_info says so, and the merged bf16 prediction matches the 4-bit one."""
    from safetensors.torch import load_file

    from clinlm.methods.sft import SFTMethod

    monkeypatch.setenv(P.ENV, "bfloat16")
    run = _auto_run(tiny_llama, tmp_path, "auto")
    with caplog.at_level(logging.WARNING, logger="clinlm.llm.fit"):
        info = SFTMethod().train(run, waits_rows(16))
    assert info["precision"] == {
        "requested": "auto", "resolved": "bfloat16", "reason": "env CLINLM_PRECISION=bfloat16",
        "keys": {"dtype": "bfloat16", "bnb.bnb_4bit_compute_dtype": "bfloat16",
                 "training.bf16": True, "predict.autocast_dtype": "bfloat16"},
        "planned_tokens": info["tokens"]}  # 1 epoch
    assert {"loss_rose", "first_loss_mean", "last_loss_mean"} <= info.keys()
    assert info["steps"] == 4 and all(map(torch.isfinite, torch.tensor(
        [info["first_loss"], info["last_loss"]])))
    assert (info["loss_rose"] is True) == ("training loss rose" in caplog.text)
    weights = load_file(str(run.model_dir / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert any(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)  # it trained

    df = waits_rows(6)
    merged = SFTMethod().predict(run, df)
    run.cfg["predict"]["merge_adapter"] = False  # bnb's own 4-bit bf16 path + LoRA
    unmerged = SFTMethod().predict(run, df)
    p, q = merged["p_yes"].to_numpy(), unmerged["p_yes"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert abs(p - q).max() < 0.02, (p, q)  # bf16 rounding, not a different model

    # numeric answers under bf16 autocast: the few digit logits stay exact fp32 numpy
    from clinlm.llm.numeric import decode_numeric
    from clinlm.llm.scorer import Scorer
    from clinlm.methods.sft import prompt_texts

    run.cfg["predict"]["merge_adapter"] = True
    scorer = Scorer.from_run(run.model_dir, run.cfg)
    # scoring streams in bf16 as training did: norms and merged layers bf16, lm_head fp32
    dtypes = {n.rpartition(".")[0].rpartition(".")[2]: p.dtype
              for n, p in scorer.model.named_parameters()}
    assert dtypes["input_layernorm"] == dtypes["q_proj"] == torch.bfloat16
    assert scorer.model.get_output_embeddings().weight.dtype == torch.float32
    est = decode_numeric(scorer, prompt_texts(scorer.tok, df["statement"].tolist(),
                                              run.task_cfg), 18, 40)
    assert ((est["y_lo"] <= est["y_pred"]) & (est["y_pred"] <= est["y_hi"])).all()
    assert ((est["y_pred"] >= 18) & (est["y_pred"] <= 40)).all()


def test_bf16_merge_of_repacked_4bit_weights(tiny_llama, monkeypatch):
    """After an eval forward (bnb may repack 4-bit weights for its bf16 CPU kernel, now kept
    with a bf16 compute dtype) the merge reads the right weights, into bf16 layers."""
    from peft import get_peft_model

    from clinlm.llm.builders import build_lora_config
    from clinlm.llm.load import load_model, merge_lora_dequantized
    from clinlm.llm.scorer import autocast

    monkeypatch.setenv(P.ENV, "bfloat16")
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "auto"}
    torch.manual_seed(0)
    model = get_peft_model(load_model({"base": str(tiny_llama), "bnb": bnb, "dtype": "auto"},
                                      "causal"),
                           build_lora_config({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM",
                                              "target_modules": ["q_proj", "v_proj", "down_proj"]}))
    for name, prm in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(prm, std=0.05)
            prm.data = prm.data.to(torch.bfloat16)
    x = torch.randint(3, 200, (3, 17))
    model.eval()
    with torch.inference_mode(), autocast(model, "auto"):
        want = model(input_ids=x).logits.float()
        merged = merge_lora_dequantized(model, "auto")
        got = merged(input_ids=x).logits.float()
    q = merged.model.layers[0].self_attn.q_proj
    assert q.__class__ is torch.nn.Linear and q.weight.dtype == torch.bfloat16
    assert (want - got).abs().max() < 3e-2 * want.abs().max()


def test_head_method_runs_in_bf16(tmp_path, tiny_llama, monkeypatch):
    """The head method with auto -> bf16: a 2-label head (too narrow for bnb's packed bf16
    kernel) trains and scores; probabilities are proper."""
    from clinlm.methods.head import HeadMethod

    monkeypatch.setenv(P.ENV, "bfloat16")
    cfg = {"method": "head", "base": str(tiny_llama), "max_train_rows": None, "dtype": "auto",
           "attn_implementation": "auto", "non_quantized_dtype": "auto",  # the CPU presets'
           "bnb": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                   "bnb_4bit_compute_dtype": "auto"},
           "lora": {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS",
                    "target_modules": ["q_proj", "v_proj"]},
           "training": {"per_device_train_batch_size": 8, "num_train_epochs": 1, "bf16": "auto",
                        "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
                        "report_to": "none"},
           "predict": {"batch_size": 4, "max_length": 64, "autocast_dtype": "auto"}}
    run = Run("noshow", "classification", "h", cfg, tmp_path / "h", tmp_path, seed=0,
              task_cfg=YES_NO_TASK)
    info = HeadMethod().train(run, waits_rows(16))
    assert info["precision"]["resolved"] == "bfloat16"
    out = HeadMethod().predict(run, waits_rows(5))
    assert isinstance(out, pd.DataFrame) and out["p_yes"].between(0, 1).all()


def test_default_threads_follow_the_cpu_affinity(monkeypatch):
    """``torch_threads: null`` uses the cores the process may run on (taskset / cpusets), split
    between the local processes of a distributed launch."""
    import os

    import torch

    from clinlm.llm import device as builders
    n0 = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
        builders.set_threads(None)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        builders.set_threads(None)
        assert torch.get_num_threads() == 2
        builders.set_threads(3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(n0)


def test_attn_implementation_auto_is_eager_on_cpu():
    """``attn_implementation: auto``: eager on a CPU, transformers' default on a GPU; other
    values pass through to from_pretrained."""
    from clinlm.llm.load import attn_implementation

    assert attn_implementation("auto", "cpu") == "eager"
    assert attn_implementation("auto", "cuda:0") is None
    assert attn_implementation("sdpa", "cpu") == "sdpa" and attn_implementation(None) is None


@pytest.mark.parametrize("kind", ["causal", "seq_cls"])
def test_non_quantized_dtype_auto_gives_a_bf16_stream_with_fp32_outputs(tiny_llama, monkeypatch,
                                                                        kind):
    """``non_quantized_dtype: auto`` with a bf16 compute dtype: norms and the input embedding
    compute in bf16 (peft's fp32 upcast undone), the output layer -- the tied lm_head, or a
    head trained in full -- keeps fp32 weights and gives fp32 outputs, gradients reach LoRA,
    and the layout is peft's fp32 one when the key is null or the compute dtype is fp32."""
    from clinlm.llm.load import load_model

    monkeypatch.setenv(P.ENV, "bfloat16")
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "auto"}
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM" if kind == "causal" else "SEQ_CLS"}
    if kind == "seq_cls":
        lora["modules_to_save"] = ["score"]
    extra = {"num_labels": 2} if kind == "seq_cls" else {}

    def load(nq, compute="auto"):
        cfg = {"base": str(tiny_llama), "dtype": "float32", "attn_implementation": "auto",
               "non_quantized_dtype": nq, "bnb": {**bnb, "bnb_4bit_compute_dtype": compute}}
        return load_model(cfg, kind, lora=lora, seed=0, **extra)

    model = load("auto")
    base = model.get_base_model()
    assert base.config._attn_implementation == "eager"
    norms = {p.dtype for n, p in base.named_parameters() if "norm" in n}
    assert norms == {torch.bfloat16}
    out_layer = base.lm_head if kind == "causal" else base.score
    trained = {p.dtype for n, p in model.named_parameters() if p.requires_grad and "score" in n}
    assert out_layer.weight.dtype == torch.float32 and trained <= {torch.float32}
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    out.logits.float().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]
    assert grads and all(g is not None for g in grads)

    for nq, compute in ((None, "auto"), ("auto", "float32")):
        fp32 = load(nq, compute).get_base_model()
        assert {p.dtype for n, p in fp32.named_parameters() if "norm" in n} == {torch.float32}
