"""params.yaml validation: unknown keys and wrong types stop with the key's name."""

import copy

import pytest
import yaml

from clinlm.params import ParamsError, load_params, validate
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml", library_models=None)  # every section, libraries too


def test_repo_params_are_valid(params):
    from clinlm.params import all_runs
    runs = all_runs(params)
    assert "noshow-gbdt" in params["runs"]["gbdt"]  # the baseline is in every comparison
    assert {r["task"] for r in runs.values() if r["method"] == "gbdt"} == set(params["tasks"])
    assert "llama31-8b-sft" in params["models"]  # GPU preset present...
    assert all(r["model"] != "llama31-8b-sft" for r in runs.values())  # ...not default


@pytest.mark.parametrize("path,value,needle", [
    (("models", "smollm2-sft", "lora", "rank"), 8, "models.smollm2-sft.lora.rank"),
    (("models", "smollm2-sft", "lora", "r"), "sixteen", "models.smollm2-sft.lora.r"),
    (("models", "smollm2-sft", "bnb", "load_in_4bits"), True, "models.smollm2-sft.bnb.load_in_4bits"),
    (("models", "smollm2-sft", "training", "learning_rate"), "fast", "training.learning_rate"),
    (("models", "smollm2-sft", "sft", "max_length"), "long", "sft.max_length"),
    (("models", "smollm2-sft", "sft", "learning_rate"), 0.1, "sft.learning_rate"),  # belongs to training
    (("models", "smollm2-sft", "max_train_rows"), "all", "models.smollm2-sft.max_train_rows"),
    (("tasks", "noshow", "split", "test_size"), "20%", "tasks.noshow.split.test_size"),
    (("tasks", "noshow", "split", "by_patient"), True, "tasks.noshow.split.by_patient"),
    (("seed",), "42", "seed"),
    (("models", "smollm2-sft", "training", "learning_rate"), -0.001, "training.learning_rate: -0.001 is out of range"),
    (("models", "smollm2-sft", "lora", "lora_dropout"), 1.5, "lora.lora_dropout: 1.5 is out of range"),
    (("models", "smollm2-sft", "lora", "r"), 0, "lora.r: 0 is out of range"),
    (("models", "smollm2-head", "predict", "batch_size"), 0, "models.smollm2-head.predict.batch_size"),
    (("tasks", "noshow", "split", "test_size"), 1.2, "tasks.noshow.split.test_size"),
    (("tasks", "noshow", "download", "n_synthtic"), 300, "tasks.noshow.download.n_synthtic: unknown key"),
    (("models", "smollm2-sft", "dynamo", "regional"), True, "models.smollm2-sft.dynamo.regional"),
    (("models", "smollm2-sft", "dynamo", "backend"), "eager", "models.smollm2-sft.dynamo.backend"),
    (("models", "smollm2-sft", "training", "torch_compile"), "maybe", "training.torch_compile"),
])
def test_bad_values_name_the_key(params, path, value, needle):
    p = copy.deepcopy(params)
    node = p
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        validate(p)


def test_stages_check_only_their_own_model_against_the_libraries(params):
    """Data/evaluate stages skip the 12-s library import; train/predict check their model."""
    import subprocess
    import sys

    code = ("import sys; from clinlm.params import load_params; load_params('params.yaml'); "
            "print(sorted(m for m in ('transformers', 'peft', 'trl', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    from clinlm.runs import make_run
    p = copy.deepcopy(params)
    p["models"]["smollm2-sft"]["lora"]["rank"] = 8
    assert make_run("noshow-gbdt", p).model == "gbdt"  # another model's typo does not stop it
    with pytest.raises(ParamsError, match=r"models\.smollm2-sft\.lora\.rank"):
        make_run("noshow-smollm2-sft", p)
    with pytest.raises(ParamsError, match=r"models\.smollm2-sft\.lora\.rank"):
        validate(p)  # the full check (python -m clinlm.params) sees every model


def test_unknown_run_model(params):
    p = copy.deepcopy(params)
    p["runs"]["gbdt"]["x"] = {"task": "noshow", "model": "nope"}
    with pytest.raises(ParamsError, match=r"runs\.gbdt\.x\.model: no model .nope."):
        validate(p)


def test_builders_accept_the_repo_sections(params):
    from clinlm.llm import builders as hf
    m = params["models"]["smollm2-sft"]
    lora = hf.build_lora_config(m["lora"])
    assert lora.r == m["lora"]["r"] and lora.lora_alpha == m["lora"]["lora_alpha"]
    bnb = hf.build_bnb_config(m["bnb"])
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    from trl import SFTConfig
    cfg = SFTConfig(**m["sft"], **hf.build_training_kwargs(
        {**m["training"], "report_to": "none"}, "/tmp/x", 1))
    assert cfg.completion_only_loss and cfg.learning_rate == m["training"]["learning_rate"]
    gpu = params["models"]["llama31-8b-sft"]
    assert str(hf.build_bnb_config(gpu["bnb"]).bnb_4bit_compute_dtype) == "torch.bfloat16"


def test_yaml_round_trip(tmp_path, params):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    assert load_params(f) == params


def test_params_read_as_yaml_1_2_like_dvc(tmp_path):
    """`dvc exp run -S` rewrites params.yaml without quotes: `no` must stay a string."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), ["models.smollm2-sft.lora.r=32"])
    assert "save_strategy: no\n" in path.read_text()  # the quotes are gone...
    params = load_params(path)
    assert params["models"]["smollm2-sft"]["training"]["save_strategy"] == "no"  # ...still "no"
    assert params["models"]["smollm2-sft"]["lora"]["r"] == 32


@pytest.mark.parametrize("overrides,run", [
    (["+base_models.llama31-8b-instruct={source: meta-llama/Llama-3.1-8B-Instruct}",
      "+runs.sft.noshow-llama31-8b-sft={task: noshow, model: llama31-8b-sft, base: llama31-8b-instruct}"],
     "noshow-llama31-8b-sft"),
    (["+runs.vlm.vascular-smolvlm={task: vascular_age, model: smolvlm-ecg, base: smolvlm-ecg}"],
     "vascular-smolvlm"),
    (["+runs.cohere.noshow-cohere={task: noshow, model: cohere-api}"], "noshow-cohere"),
])
def test_the_documented_run_commands_validate(tmp_path, overrides, run):
    """The README's `dvc exp run -S` lines, applied by DVC's own override code, give valid params."""
    from dvc.utils.hydra import apply_overrides

    from clinlm.params import all_runs
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), overrides)
    assert run in all_runs(load_params(path, library_models=None))


@pytest.mark.parametrize("model", ["smollm2-sft", "smollm2-head", "llama31-8b-sft", "smolvlm-ecg"])
def test_launch_and_validation_keys_take_s_without_plus(tmp_path, model):
    """`dvc exp run -S models.<m>.launch.num_processes=2` (README) needs the key in params.yaml:
    DVC's override code rejects a new key without `+`."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), [f"models.{model}.launch.num_processes=2",
                                f"models.{model}.validation.rows=200"])
    cfg = load_params(path)["models"][model]
    assert cfg["launch"]["num_processes"] == 2 and cfg["validation"]["rows"] == 200
