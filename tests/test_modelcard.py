"""The generated model card: a parseable Hub header naming the base by its Hub id, and a body
built from the run's own files (settings, training rows, metrics beside the baseline's)."""

from __future__ import annotations

import copy
import json

import pytest

from clinlm.io import write_json
from clinlm.methods.interface import Run
from clinlm.params import load_params, run_spec
from tests.conftest import ROOT

HUB_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def make(params, name, tmp_path):
    """The run ``name`` of ``params`` with its model folder, metrics and summary in tmp."""
    task, task_cfg, model, model_cfg = run_spec(params, name)
    run = Run(task, task_cfg["type"], model, model_cfg, tmp_path / "models" / model, tmp_path,
              seed=params["seed"], task_cfg=task_cfg)
    write_json(run.model_dir / "train_info.json",
               {"n_train": 160, "n_train_available": 1600, "steps": 40, "train_loss": 0.61})
    return run


def write_metrics(tmp_path, task, values, baseline, summary=None):
    write_json(tmp_path / "metrics" / task / "m.json", values)
    write_json(tmp_path / "metrics" / task / "gbdt.json", baseline)
    if summary is not None:
        write_json(tmp_path / "reports" / "summary.json", {task: summary})


def card_of(run, params, name, tmp_path, **kw):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    from clinlm.modelcard import render_card
    text = render_card(run, params, name, "me/card", metrics_root=tmp_path / "metrics", **kw)
    path = tmp_path / "README.md"
    path.write_text(text)
    meta = metadata_load(path)
    assert meta == ModelCard(text).data.to_dict()  # the header parses, both ways
    assert "[More Information Needed]" not in text and "data/models" not in text.split("---")[1]
    return text, meta


CLS = {"roc_auc": 0.59, "pr_auc": 0.31, "brier": 0.161, "accuracy": 0.80, "f1": 0.0,
       "recall": 0.0, "n_test": 400, "n_failed": 0, "data_source": "kaggle"}
GBDT = {**CLS, "roc_auc": 0.68, "recall": 0.14, "f1": 0.18}


def test_sft_card_with_intervals_and_the_baseline(params, tmp_path):
    run = make(params, "noshow-smollm2-sft", tmp_path)
    run.model = "m"
    summary = {"m": {**CLS, "ci95": {"roc_auc": [0.52, 0.66]},
                     "vs_baseline": {"roc_auc": {"diff": -0.09, "ci95": [-0.15, -0.03],
                                                 "verdict": "worse"}}},
               "gbdt": {**GBDT, "ci95": {"roc_auc": [0.62, 0.74]}}}
    write_metrics(tmp_path, "noshow", CLS, GBDT, summary)
    text, meta = card_of(run, params, "noshow-smollm2-sft", tmp_path)
    assert meta["base_model"] == HUB_BASE and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation" and meta["license"] == "apache-2.0"
    assert "qlora" in meta["tags"]
    assert "| roc_auc | 0.590 [0.520, 0.660] | 0.680 [0.620, 0.740] | -0.090 [-0.150, -0.030] worse |" in text
    assert "CC BY-NC-SA 4.0" in text and "grouped by patient" in text and "80% train / 20% test" in text
    assert "160 of 1600" in text and "first tokens of `Yes` and `No`" in text
    assert "roc_auc 0.590 against the baseline's 0.680" in text and "recall 0" in text
    assert "not a medical device" in text
    cfg = run.cfg  # every bnb / LoRA / training / sft value is in the card
    for key, value in [("bnb_4bit_quant_type", cfg["bnb"]["bnb_4bit_quant_type"]),
                       ("lora_alpha", cfg["lora"]["lora_alpha"]), ("r", cfg["lora"]["r"]),
                       ("learning_rate", cfg["training"]["learning_rate"]),
                       ("completion_only_loss", cfg["sft"]["completion_only_loss"])]:
        assert f"{key}: {json.dumps(value)}" in text or f"{key}: {value}" in text, key


def test_point_metrics_only_without_summary(params, tmp_path):
    run = make(params, "noshow-smollm2-head", tmp_path)
    run.model = "m"
    write_metrics(tmp_path, "noshow", {**CLS, "data_source": "synthetic"}, GBDT)
    text, meta = card_of(run, params, "noshow-smollm2-head", tmp_path)
    assert meta["pipeline_tag"] == "text-classification" and meta["base_model"] == HUB_BASE
    assert "Point estimates only" in text and "[0." not in text.split("## Results")[1]
    assert "linear head" in text and "SYNTHETIC" in text and "PeftModel.from_pretrained(base" in text
    assert 'head = json.load(open(repo_path("head.json")))' in text  # the scaler is applied


def test_regression_card_and_hub_or_local_bases(params, tmp_path):
    p = copy.deepcopy(params)
    p["base_models"]["smollm2-135m-instruct"]["source"] = "meta-llama/Llama-3.1-8B-Instruct"
    run = make(p, "vascular-smollm2-sft", tmp_path)
    run.model = "m"
    reg = {"mae": 12.2, "rmse": 15.2, "r2": 0.65, "pearson_r": 0.86, "within_5y": 0.26,
           "coverage_90": 0.84, "n_test": 160, "n_failed": 0, "data_source": "ptbxl"}
    write_metrics(tmp_path, "vascular_age", reg, {**reg, "mae": 5.9, "coverage_90": 0.72})
    text, meta = card_of(run, p, "vascular-smollm2-sft", tmp_path)
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B-Instruct" and meta["license"] == "llama3.1"
    assert "median" in text and "90 %" in text and "[18, 110]" in text and "CC BY 4.0" in text
    assert "mae 12.200 against the baseline's 5.900" in text and "cover only 84%" in text
    assert "Hub commit" not in text  # the base folder records none
    sha = "0123456789abcdef0123456789abcdef01234567"  # a pinned Hub base records its commit
    base = tmp_path / "hub-base"
    base.mkdir()
    write_json(base / "materialized.json", {"source": "meta-llama/Llama-3.1-8B-Instruct",
                                            "revision": sha})
    run.cfg["base"] = str(base)
    text, _ = card_of(run, p, "vascular-smollm2-sft", tmp_path)
    assert f"meta-llama/Llama-3.1-8B-Instruct from the Hugging Face Hub, Hub commit `{sha}`." \
        in text
    (tmp_path / "local-base").mkdir()
    p["base_models"]["smollm2-135m-instruct"]["source"] = str(tmp_path / "local-base")
    text, meta = card_of(run, p, "vascular-smollm2-sft", tmp_path)
    assert "base_model" not in meta and "a local model folder (no Hub id)" in text


def test_baseline_card(params, tmp_path):
    run = make(params, "noshow-gbdt", tmp_path)
    write_metrics(tmp_path, "noshow", GBDT, GBDT)
    text, meta = card_of(run, params, "noshow-gbdt", tmp_path)
    assert meta["library_name"] == "sklearn" and "base_model" not in meta
    assert meta["pipeline_tag"] == "tabular-classification"


def test_card_claims_read_every_metric_and_the_baseline_card_has_its_estimates(params, tmp_path):
    """ROC-AUC above the baseline's but F1 below: the card must not say no metric is below."""
    run = make(params, "noshow-smollm2-sft", tmp_path)
    run.model = "m"
    write_metrics(tmp_path, "noshow", {**CLS, "roc_auc": 0.70, "f1": 0.025, "recall": 0.01},
                  GBDT, {"m": {}, "gbdt": {**GBDT, "ci95": {"roc_auc": [0.617, 0.735]}}})
    text, _ = card_of(run, params, "noshow-smollm2-sft", tmp_path)
    assert "No metric here is below" not in text
    assert "Below the baseline's point estimate on: " in text and "f1 0.025 vs 0.180" in text
    base = make(params, "noshow-gbdt", tmp_path)
    text, _ = card_of(base, params, "noshow-gbdt", tmp_path)
    assert "| roc_auc | 0.680 [0.617, 0.735] | 0.680 [0.617, 0.735] |" in text
    assert "– [" not in text
    assert "No metric here is below" not in text  # the baseline is not compared with itself
