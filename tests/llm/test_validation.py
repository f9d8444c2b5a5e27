"""Validation while training (clinlm.llm.validation) and the training keys that are errors."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.interface import Run
from tests.conftest import ROOT, YES_NO_TASK, tiny_sft_cfg, waits_rows


def _ages(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    age = rng.integers(20, 90, n)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "group": [str(i // 2) for i in range(n)],
                         "statement": [f"Case of a {a}-year-old." for a in age], "label": age})


def test_the_slice_is_seeded_grouped_and_outside_training():
    from clinlm.llm.validation import split_validation
    df = _ages(60)
    train, val = split_validation(df, 12, 42, True, "regression")
    again, val2 = split_validation(df, 12, 42, True, "regression")
    assert val["id"].tolist() == val2["id"].tolist() and 8 <= len(val) <= 16
    assert not set(train["group"]) & set(val["group"])  # a patient on one side only
    assert len(train) + len(val) == len(df)
    share_train, share_val = split_validation(df, 0.25, 42, False, "regression")
    assert len(share_val) == 15 and not set(share_train["id"]) & set(share_val["id"])
    assert split_validation(df, None, 42, True, "regression") == (df, None)
    with pytest.raises(ValueError, match="validation.rows"):
        split_validation(df, 40, 42, True, "regression")


@pytest.mark.parametrize("cfg,needle", [
    ({"training": {"eval_strategy": "steps"}},
     "models.m.training.eval_strategy: evaluation needs a validation"),
    ({"training": {"load_best_model_at_end": True}}, "models.m.training.load_best_model_at_end"),
    ({"training": {"per_device_eval_batch_size": 4}}, "models.m.training.per_device_eval_batch_size"),
    ({"training": {"save_strategy": "best"}}, "models.m.training.save_strategy"),
    ({"sft": {"eval_packing": True}}, "models.m.sft.eval_packing"),
    ({"validation": {"early_stopping_patience": 2}}, "models.m.validation.early_stopping_patience"),
    ({"training": {"eval_strategy": "no"}, "validation": {"rows": 10}},
     "models.m.training.eval_strategy: no"),
    ({"training": {"metric_for_best_model": "f1"}, "validation": {"rows": 10}},
     "metric_for_best_model: 'f1'"),
    ({"training": {"metric_for_best_model": "loss"},
      "validation": {"rows": 10, "early_stopping_patience": 2}}, "load_best_model_at_end: true"),
])
def test_evaluation_keys_are_errors_naming_the_key(cfg, needle):
    from clinlm.llm.validation import check_evaluation_keys
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("'", ".")):
        check_evaluation_keys(cfg, "models.m")
    check_evaluation_keys({"training": {"eval_strategy": "no", "save_strategy": "no"},
                           "sft": {"eval_packing": None}, "validation": {"rows": None}},
                          "models.m")  # the defaults: fine


@pytest.mark.parametrize("key,value,needle", [
    ("output_dir", "out", "data/work/<task>/<model>/checkpoints"),
    ("seed", 3, "top-level `seed`"),
])
def test_project_owned_training_keys_are_errors(key, value, needle):
    from clinlm.llm.builders import build_training_kwargs
    from clinlm.params import ParamsError, load_params, validate
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["models"]["smollm2-sft"]["training"][key] = value
    with pytest.raises(ParamsError, match=f"models.smollm2-sft.training.{key}: .*{needle}"):
        validate(params, ["smollm2-sft"])
    with pytest.raises(ValueError, match=f"training.{key}"):
        build_training_kwargs({key: value}, "x", 1)


def test_resume_and_metric_keys_are_checked_by_params():
    from clinlm.params import ParamsError, load_params, validate
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["models"]["smollm2-sft"]["training"]["resume_from_checkpoint"] = True
    validate(params, ["smollm2-sft"])  # true: the run's last checkpoint
    params["models"]["smollm2-sft"]["validation"]["rows"] = 100
    params["models"]["smollm2-sft"]["training"]["metric_for_best_model"] = "roc_auc"
    with pytest.raises(ParamsError, match="vascular-smollm2-sft.*not computed for a regression"):
        validate(params, ["smollm2-sft"])  # the model also trains the vascular_age run


def test_resume_setting(tmp_path):
    from clinlm.llm.fit import FINGERPRINT, LOSS_STATE, resume_checkpoint
    ck = tmp_path / "checkpoints"
    (ck / "checkpoint-4").mkdir(parents=True)
    for name in ("optimizer.pt", "trainer_state.json", f"{LOSS_STATE}0.json"):
        (ck / "checkpoint-4" / name).write_text("{}")
    (ck / "checkpoint-6").mkdir()  # killed while saving: incomplete
    (ck / FINGERPRINT).write_text('{"a": 1}')
    assert resume_checkpoint(None, ck, {"a": 1}) == ck / "checkpoint-4"
    assert resume_checkpoint(None, ck, {"a": 2}) is None  # another run's checkpoints
    assert resume_checkpoint(True, ck, {"a": 2}) == ck / "checkpoint-4"
    assert resume_checkpoint(False, ck, {"a": 1}) is None
    assert resume_checkpoint(str(ck / "checkpoint-4"), ck, {}) == ck / "checkpoint-4"
    with pytest.raises(ValueError, match="resume_from_checkpoint: .* not a Trainer checkpoint"):
        resume_checkpoint(str(ck / "checkpoint-6"), ck, {})
    with pytest.raises(ValueError, match="resume_from_checkpoint: true, but"):
        resume_checkpoint(True, tmp_path / "none", {})


def _snapshots():
    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        """The trainable weights at each evaluation, by step."""
        by_step: dict = {}

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            self.by_step[state.global_step] = {
                n.replace(".default", ""): p.detach().clone()
                for n, p in model.named_parameters() if p.requires_grad}

    return Snap()


@pytest.mark.slow  # ~25-30 s on 2 shared cores (training with evaluations)
def test_early_stopping_keeps_the_best_checkpoint(tiny_llama, tmp_path):
    """sft classification, evaluated every step. To make the plateau certain, "better" is a
    HIGHER validation loss (``greater_is_better: true``) while training lowers it: the first
    evaluation is the best, two more without improvement stop the run, and the saved model is
    the step-1 weights, not the last ones. The curves are in dvclive, x = optimizer step."""
    import torch
    from safetensors.torch import load_file

    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=2, validation={"rows": 8, "early_stopping_patience": 2})
    cfg["training"].update(per_device_train_batch_size=4, eval_strategy="steps", eval_steps=1,
                           save_strategy="steps", save_steps=1, load_best_model_at_end=True,
                           metric_for_best_model="loss", greater_is_better=True,
                           report_to="dvclive")
    run = Run("noshow", "classification", "es", cfg, tmp_path / "m", tmp_path, seed=1,
              task_cfg={**YES_NO_TASK, "split": {"group_by_patient": True}},
              log_dir=tmp_path / "curves", work_dir=tmp_path / "work")
    snap = _snapshots()
    info = SFTMethod().train(run, waits_rows(32), extra_callbacks=[snap])
    v = info["validation"]
    assert v["rows"] == 8 and v["stopped_early"] and info["steps"] == 3 < v["planned_steps"]
    assert v["best_step"] == 1 and v["best_model_loaded"] and v["evaluations"] == 3
    assert {"eval_loss", "eval_roc_auc", "eval_accuracy"} <= set(v["last"])
    saved = {k.replace("base_model.model.", ""): t for k, t in
             load_file(str(tmp_path / "m" / "adapter_model.safetensors")).items()}
    def same(step):
        return all(torch.equal(saved[k.replace("base_model.model.", "")], t)
                   for k, t in snap.by_step[step].items())
    assert same(1) and not same(3)
    assert not (tmp_path / "work" / "checkpoints").exists()  # removed after success
    curve = (tmp_path / "curves" / "plots" / "metrics" / "eval" / "loss.tsv").read_text().split()
    assert curve[:2] == ["step", "eval_loss"] or curve[:2] == ["step", "loss"]
    assert [int(x) for x in curve[2::2]] == [1, 2, 3]  # x: the optimizer step


@pytest.mark.slow  # ~25-30 s on 2 shared cores (training with evaluations)
def test_validation_mae_is_the_predict_stage_mae(tiny_llama, tmp_path):
    """sft regression: eval_mae comes from the exact numeric decoding of predict; at the end
    of training it equals the MAE of the saved model's predictions on the same rows."""
    from clinlm.llm.validation import score_metrics, train_rows
    from clinlm.methods.sft import SFTMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, validation={"rows": 6},
                       predict={"batch_size": 4, "autocast_dtype": None, "merge_adapter": False})
    cfg["training"].update(per_device_train_batch_size=6, eval_strategy="epoch",
                           save_strategy="no")
    task = {**YES_NO_TASK, "answer": {"min": 18, "max": 110}, "split": {"group_by_patient": True}}
    run = Run("vascular_age", "regression", "mae", cfg, tmp_path / "m", tmp_path, seed=2,
              task_cfg=task)
    df = _ages(30)
    info = SFTMethod().train(run, df)
    _, val = train_rows(run, df)
    want = score_metrics(SFTMethod().predict(run, val), val["label"], "regression")["mae"]
    assert info["validation"]["last"]["eval_mae"] == pytest.approx(want, abs=1e-6)
    assert info["n_train"] + len(val) == len(df)


def test_head_validation_metrics(tiny_llama, tmp_path):
    from clinlm.methods.head import HeadMethod
    cfg = tiny_sft_cfg(tiny_llama, epochs=1, validation={"rows": 8})
    cfg.pop("sft")
    cfg.update(method="head", lora={**cfg["lora"], "task_type": "SEQ_CLS"})
    cfg["training"].update(per_device_train_batch_size=8, eval_strategy="epoch")
    run = Run("noshow", "classification", "hv", cfg, tmp_path / "m", tmp_path, seed=1,
              task_cfg={**YES_NO_TASK, "split": {"group_by_patient": True}})
    info = HeadMethod().train(run, waits_rows(32))
    last = info["validation"]["last"]
    assert {"eval_loss", "eval_roc_auc", "eval_accuracy"} <= set(last)
    assert 0 <= last["eval_accuracy"] <= 1 and info["n_train"] == 24


def test_lora_runs_skip_the_unused_parameter_search_under_ddp():
    from clinlm.llm.builders import build_training_kwargs
    assert build_training_kwargs({}, "x", 1)["ddp_find_unused_parameters"] is False
    kept = build_training_kwargs({"ddp_find_unused_parameters": True}, "x", 1)
    assert kept["ddp_find_unused_parameters"] is True  # the user's setting stays
