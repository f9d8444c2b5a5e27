"""Kill a training run mid-way, rerun the stage through `dvc repro`: it resumes from its last
checkpoint and ends with the very model, train_info and curves of an uninterrupted run.

A scratch DVC project (no git) holds one sft run of the tiny random Llama; the train stage is
run by `dvc repro --single-item`, as `dvc repro` runs it. float32 (CLINLM_PRECISION) on CPU:
the comparison is bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, YES_NO_TASK, copy_checkout, tiny_sft_cfg, waits_rows

RUN, MODEL, TASK = "noshow-tiny-sft", "tiny-sft", "noshow"
STEPS = 16  # 32 rows, batch 2, one epoch; a checkpoint every 3 steps, the loss logged every 2
COPIED = ["clinlm", "stages", "dvc.yaml", "pyproject.toml", ".dvcignore"]


def _project(repo: Path, tiny_llama: Path, rows: int = 32) -> dict:
    copy_checkout(repo, only=COPIED)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_models"]["tiny"] = {"source": str(tiny_llama)}
    cfg = tiny_sft_cfg("data/models/base/tiny", epochs=1)
    cfg["training"].update(per_device_train_batch_size=2, save_strategy="steps", save_steps=3,
                           logging_steps=2, report_to="dvclive", learning_rate=0.005)
    params["models"] = {MODEL: cfg, "gbdt": params["models"]["gbdt"]}
    params["tasks"][TASK]["prompt"] = {**params["tasks"][TASK]["prompt"], **YES_NO_TASK["prompt"]}
    params["runs"] = {m: {} for m in params["runs"]}
    params["runs"]["sft"] = {RUN: {"task": TASK, "model": MODEL, "base": "tiny"}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_llama, repo / "data" / "models" / "base" / "tiny")
    (repo / "data" / "processed" / TASK).mkdir(parents=True)
    waits_rows(rows).to_parquet(repo / "data" / "processed" / TASK / "train.parquet")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "CLINLM_PRECISION": "float32", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONSAFEPATH", None)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=repo, env=env,
                   check=True)
    return env


def _repro(repo: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", *extra,
                             f"train_sft@{RUN}"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-5000:]
    return out


def _result(repo: Path) -> dict:
    from safetensors.torch import load_file
    model = repo / "data" / "models" / TASK / MODEL
    curves = repo / "metrics" / TASK / "train" / MODEL / "plots" / "metrics"
    return {"adapter": load_file(str(model / "adapter_model.safetensors")),
            "train_info": json.loads((model / "train_info.json").read_text()),
            "curves": {p.name: p.read_text() for p in sorted(curves.rglob("*.tsv"))}}


@pytest.mark.slow  # three dvc repro runs of the tiny model (~20 s each on 2 idle cores)
def test_killed_run_resumes_in_dvc_repro_and_equals_an_uninterrupted_run(tiny_llama, tmp_path):
    import torch
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _project(repo, tiny_llama)
    work = repo / "data" / "work" / TASK / MODEL / "checkpoints"

    _finish(_repro(repo, env))  # uninterrupted
    want = _result(repo)
    assert not work.exists()  # checkpoints removed after success
    assert want["train_info"]["steps"] == STEPS

    proc = _repro(repo, env, "--force")
    deadline = time.time() + 240
    while not list(work.glob("checkpoint-*/clinlm_loss_state_rank0.json")):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stdout.read()}"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs
    proc.wait()
    steps = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*"))
    assert steps and steps[-1] < STEPS, steps

    _finish(_repro(repo, env))  # the next `dvc repro`: the stage is not up to date, reruns
    got = _result(repo)
    timing = json.loads((repo / "metrics" / TASK / "timing" / "train" / f"{MODEL}.json").read_text())
    assert timing["resumed_from_step"] >= 3  # it did resume ...
    assert not work.exists()
    assert got["adapter"].keys() == want["adapter"].keys()
    for key, tensor in want["adapter"].items():  # ... and ended bitwise where the other did
        assert torch.equal(got["adapter"][key], tensor), key
    assert got["train_info"] == want["train_info"]
    assert got["curves"] == want["curves"] and "loss.tsv" in got["curves"]
    assert not list((repo / "metrics" / TASK / "train").glob(f".{MODEL}.*"))  # the killed run's temp
