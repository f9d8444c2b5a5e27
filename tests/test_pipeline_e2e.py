"""End to end: the real `dvc repro` on a tiny slice, in a temporary copy of the repo.

Runs every stage for real (embedded SmolLM2 materialized from its GGUF, QLoRA training on a
few rows, batched prediction, GBDT baseline, stacks, evaluate, compare), then checks the
metrics files (the tables' LLM runs have their own project: tests/test_tables_e2e.py), that
`dvc status` is clean, and that a LoRA change reruns train and later stages
only. The LLM runs train and predict on the 2-layer ``tiny_llama`` base (materialized by the
same base_model stage, as a local folder): the stages, files and DVC graph are the default's,
the compute seconds. The real SmolLM2 folder the GGUF stage writes is checked on its own: it
loads through the runs' 4-bit loader and scores a prompt.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_BASE, copy_checkout, on_tiny_base

pytestmark = pytest.mark.slow


def stale(status_json: str) -> set[str]:
    """Stages `dvc status --json` reports, without the ``inputs@`` stages that are only
    "always changed" (they hash the user's files on every repro; see stages/inputs.py)."""
    return {name for name, why in json.loads(status_json).items() if why != ["always changed"]}


def ran(repro_out: str) -> set[str]:
    """Stages a `dvc repro` ran, without the always-run ``inputs@`` stages."""
    return {line.split("'")[1] for line in repro_out.splitlines()
            if line.startswith("Running stage") and not line.split("'")[1].startswith("inputs@")}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd``, its exit status left to the caller."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


def sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("KAGGLE_USERNAME", None), env.pop("KAGGLE_KEY", None), env.pop("KAGGLE_API_TOKEN", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llama) -> Path:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    copy_checkout(dst, skip=("dvc.lock", "metrics"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=240)
    params["tasks"]["vascular_age"]["download"].update(source="synthetic", n_synthetic=40)
    params["tasks"]["vascular_age"]["images"].update(width_px=192, height_px=128)
    for name in ("smollm2-sft", "smollm2-head"):  # every default run, on a few rows
        m = params["models"][name]
        m["max_train_rows"] = 8
        m["training"].update(num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1)
    on_tiny_base(params, tiny_llama)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "e2e"], dst)
    sh(["dvc", "repro"], dst)
    return dst


def test_metrics_written(repo):
    for model in ("smollm2-sft", "gbdt"):
        m = json.loads((repo / "metrics" / "noshow" / f"{model}.json").read_text())
        for key in ("roc_auc", "pr_auc", "accuracy", "f1", "recall", "brier", "n_train",
                    "n_test", "data_source", "method"):
            assert key in m, key
        assert m["data_source"] == "synthetic" and m["n_test"] > 30
        assert 0 <= m["roc_auc"] <= 1
    assert json.loads((repo / "metrics/noshow/smollm2-sft.json").read_text())["n_train"] == 8
    summary = (repo / "reports" / "summary.md").read_text()
    assert "smollm2-sft" in summary and "gbdt" in summary
    assert (repo / "metrics/noshow/plots/gbdt/roc.json").exists()
    assert (repo / "metrics/noshow/train/smollm2-sft/train_info.json").exists()


def test_vascular_age_metrics_and_images(repo):
    """The regression task runs through the same stages: metrics keys, plots, PNGs, summary."""
    split = json.loads((repo / "data/processed/vascular_age/split.json").read_text())
    assert split["noise_floor_mae"] > 0 and 18 < split["train_mean"] < 110
    for model in ("smollm2-sft", "smollm2-head", "gbdt"):
        m = json.loads((repo / "metrics" / "vascular_age" / f"{model}.json").read_text())
        for key in ("mae", "rmse", "r2", "pearson_r", "bias", "within_5y", "coverage_90",
                    "n_train", "n_test", "data_source", "method", "mean_predictor_mae",
                    "noise_floor_mae"):
            assert key in m, (model, key)
        assert m["n_test"] == split["n_test"] and m["mae"] > 0
        for plot in ("scatter", "bland_altman"):
            assert (repo / f"metrics/vascular_age/plots/{model}/{plot}.json").exists()
    sft = json.loads((repo / "metrics/vascular_age/smollm2-sft.json").read_text())
    assert 0 <= sft["coverage_90"] <= 1  # the digit distribution gives an interval
    summary = (repo / "reports" / "summary.md").read_text()
    assert "## noshow" in summary and "## vascular_age" in summary and "smollm2-head" in summary
    images = list((repo / "data/interim/vascular_age/images").glob("*.png"))
    assert len(images) == 40


def test_status_clean_and_lora_change_reruns_train_only(repo):
    assert not stale(sh(["dvc", "status", "--json"], repo))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["smollm2-sft"]["lora"]["r"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro", "--dry"], repo)
    stages = ran(out)
    # --dry cannot know predict's output will change, so evaluate/compare are not listed
    assert {"train_sft@noshow-smollm2-sft", "predict_sft@noshow-smollm2-sft"} <= stages
    assert not stages & {"download@noshow", "statements@noshow", "split@noshow", "format@noshow",
                      "train_gbdt@noshow-gbdt", "train_head@noshow-smollm2-head",
                      "base_model@smollm2-135m-instruct", f"base_model@{TINY_BASE}"}
    params["models"]["smollm2-sft"]["lora"]["r"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_embedded_base_from_gguf_loads_in_4bit_and_scores(repo):
    """The GGUF -> safetensors stage's folder (the default runs' base): a plain dense Llama
    (no GGUF quantization_config left, or the 4-bit load would refuse to stack two) that the
    runs' own loader quantizes to 4-bit and that scores a chat prompt with finite logits."""
    import torch

    from clinlm.llm.load import load_model
    from clinlm.llm.tokenizer import load_tokenizer

    base = repo / "data/models/base/smollm2-135m-instruct"
    info = json.loads((base / "materialized.json").read_text())
    assert info["source"] == "embedded:smollm2" and info["architecture"] == "LlamaForCausalLM"
    assert info["n_parameters"] > 100_000_000 and info["dtype"] == "float32"
    assert "quantization_config" not in json.loads((base / "config.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    cfg = {**params["models"]["smollm2-sft"], "base": str(base)}
    assert cfg["bnb"]["load_in_4bit"]
    model = load_model(cfg, "causal")
    n_4bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert n_4bit == model.config.num_hidden_layers * 7  # q k v o gate up down
    tok = load_tokenizer(base)
    prompt = params["tasks"]["noshow"]["prompt"]
    text = tok.apply_chat_template([{"role": "system", "content": prompt["system"]},
                                    {"role": "user", "content": prompt["question"]}],
                                   tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1].float()
    assert torch.isfinite(logits).all() and logits.std() > 0


@pytest.mark.parametrize("module,expected", [
    # the stack runs an LLM member (vascular: the head) and imports both LLM methods
    ("clinlm/methods/head.py", {"train_head", "predict_head", "train_stack", "predict_stack"}),
    ("clinlm/cohere_client.py", set()),  # no cohere run: nothing else depends on it
    ("clinlm/llm/fit.py", {"train_sft", "predict_sft", "train_head", "predict_head",
                           "train_vlm", "predict_vlm", "train_stack", "predict_stack"}),
])
def test_editing_a_module_stales_only_its_users(repo, module, expected):
    path = repo / module
    before = path.read_text()
    try:
        path.write_text(before + "\n# edited\n")
        out = sh(["dvc", "status", "--json"], repo)
    finally:
        path.write_text(before)
    changed = {name.split("@")[0] for name in stale(out)}
    assert changed == expected, (module, sorted(changed))


def test_predict_cli_on_a_new_csv(repo, tmp_path):
    raw = (repo / "data/raw/noshow/appointments.csv").read_text().splitlines()
    new = tmp_path / "new.csv"
    new.write_text("\n".join(raw[:11]) + "\n")
    out = tmp_path / "preds.csv"
    sh([sys.executable, "-m", "clinlm.predict", "--run", "noshow-gbdt", "--input", str(new),
        "--output", str(out)], repo)
    lines = out.read_text().splitlines()
    assert lines[0] == "row,id,y_true,p_yes,y_pred,status,field,error" and len(lines) == 11


def test_dvc_remote_push_clone_pull_reuses_every_stage(repo, tmp_path):
    """A teammate (or a GPU box) pulls the cached stages from a DVC remote: nothing reruns."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "-f", "shared", str(remote)], repo)
    sh([*git, "add", "-A"], repo)
    sh([*git, "commit", "-qm", "results + remote"], repo)
    sh(["dvc", "push", "-q"], repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data").exists()
    sh(["dvc", "pull", "-q"], clone)
    assert (clone / "data/models/noshow/smollm2-sft/adapter_model.safetensors").exists()
    assert not stale(sh(["dvc", "status", "--json"], clone))
    out = sh(["dvc", "repro"], clone)
    assert not ran(out), out[-2000:]


def test_launch_two_processes_through_dvc(repo):
    """`launch.num_processes: 2` -> the stages re-execute under torchrun (gloo on CPU): DDP
    training written once by rank 0, sharded prediction gathered into the one CSV."""
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["models"]["smollm2-sft"]["launch"] = {"num_processes": 2}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro", "predict_sft@noshow-smollm2-sft"], repo)
    assert "Running stage 'train_sft@noshow-smollm2-sft'" in out
    info = json.loads((repo / "data/models/noshow/smollm2-sft/train_info.json").read_text())
    assert info["world_size"] == 2 and info["distributed"] == "MULTI_CPU"
    train = json.loads((repo / "metrics/noshow/timing/train/smollm2-sft.json").read_text())
    assert set(train["peak_memory_gib"]) == {"rank0", "rank1"} and train["tokens_per_second"] > 0
    timing = json.loads((repo / "metrics/noshow/timing/predict/smollm2-sft.json").read_text())
    assert timing["processes"] == 2
    pred = (repo / "data/predictions/noshow/smollm2-sft.csv").read_text().splitlines()
    test_ids = pd.read_parquet(repo / "data/processed/noshow/test.parquet")["id"]
    assert [line.split(",")[0] for line in pred[1:]] == test_ids.astype(str).tolist()
