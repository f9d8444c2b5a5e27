"""Bring your own table, end to end: the real `dvc repro` on a user's ECG table as exported.

A Chapman-like export (semicolon-separated, MALE/FEMALE, a rhythm column, no id) and then a
UCI-like table (``?`` for missing, 0/1 sex, 200+ columns, no id), both generated, go through
every stage with only a params mapping: gbdt and both LLM methods reach reports/summary.md
(the LLM runs on the 2-layer ``tiny_llama`` base: the table's path is under test here, not the
model; test_pipeline_e2e checks the real SmolLM2 base).
Also: the input file is a dependency (edit it in place -> download reruns), and a failed
stage leaves the committed curves and metrics as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_checkout, on_tiny_base
from tests.vascular.test_csvsource import CHAPMAN_MAPPING, UCI_MAPPING, chapman_like, uci_like

pytestmark = pytest.mark.slow

VASCULAR_RUNS = ("vascular-smollm2-sft", "vascular-smollm2-head", "vascular-gbdt")


def sh(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        env.pop(k, None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def set_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _chapman(params: dict) -> None:
    dl = params["tasks"]["vascular_age"]["download"]
    dl.update(source="csv", csv_path="mydata/chapman.csv", csv_target_column="PatientAge",
              id_column=None, columns=CHAPMAN_MAPPING)
    params["tasks"]["vascular_age"]["prompt"]["target"] = "age"
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=240)
    for name in ("smollm2-sft", "smollm2-head"):
        m = params["models"][name]
        m["max_train_rows"] = 8
        m["training"].update(num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1)
    runs = params["runs"]
    runs["sft"] = {"vascular-smollm2-sft": runs["sft"]["vascular-smollm2-sft"]}
    runs["head"] = {"vascular-smollm2-head": runs["head"]["vascular-smollm2-head"]}
    for method in runs:  # gbdt keeps both tasks (the no-show baseline is seconds)
        if method not in ("sft", "head", "gbdt"):
            runs[method] = {}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llama) -> Path:
    dst = tmp_path_factory.mktemp("byot") / "repo"
    copy_checkout(dst, skip=("dvc.lock", "metrics"))
    (dst / "mydata").mkdir()
    (dst / "mydata" / "chapman.csv").write_text(chapman_like(70))
    set_params(dst, _chapman)
    set_params(dst, lambda p: on_tiny_base(p, tiny_llama, keep_embedded=False))
    sh(["git", "init", "-q"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "byot"], dst)
    sh(["dvc", "repro"], dst)
    return dst


def _metrics(repo: Path, model: str) -> dict:
    return json.loads((repo / "metrics" / "vascular_age" / f"{model}.json").read_text())


def test_chapman_like_export_runs_end_to_end(repo: Path) -> None:
    for model in ("smollm2-sft", "smollm2-head", "gbdt"):
        m = _metrics(repo, model)
        assert m["data_source"] == "csv" and m["n_test"] >= 10 and m["mae"] > 0, model
    summary = (repo / "reports" / "summary.md").read_text()
    assert all(r in summary for r in ("smollm2-sft", "smollm2-head", "gbdt"))
    info = json.loads((repo / "data/raw/vascular_age/download.json").read_text())
    assert [f["column"] for f in info["features"]] == list(CHAPMAN_MAPPING)
    table = pd.read_parquet(repo / "data/interim/vascular_age/table.parquet")
    assert table["statement"].str.contains("atrial rate").all()
    assert table["statement"].str.contains("rhythm ").all()
    # the prompt names the target the user mapped
    fmt = next((repo / "data/processed/vascular_age/formats").glob("*.jsonl")).read_text()
    assert "person's age in years" in fmt and "vascular age" not in fmt
    # no recordings: render drew nothing and did not fail
    assert json.loads((repo / "data/interim/vascular_age/images.json").read_text())[
        "n_images"] == 0
    gbdt = json.loads((repo / "data/models/vascular_age/gbdt/train_info.json").read_text())
    assert gbdt["empty_features_left_out"] == []
    sft = json.loads((repo / "data/models/vascular_age/smollm2-sft/train_info.json").read_text())
    n_young = int((pd.read_parquet(repo / "data/processed/vascular_age/train.parquet")["label"]
                   < 18).sum())
    assert n_young > 0 and sft["n_train_targets_outside_answer_range"] == n_young


def test_editing_the_input_file_reruns_download(repo: Path) -> None:
    out = sh(["dvc", "repro", "download@vascular_age"], repo).stdout
    assert "Stage 'download@vascular_age' didn't change" in out  # same bytes: nothing reruns
    csv = repo / "mydata" / "chapman.csv"
    before = csv.read_text()
    csv.write_text(before.replace("MUSE_00000", "MUSE_0000X", 1))  # any byte edited in place
    try:
        out = sh(["dvc", "repro", "--single-item", "inputs@vascular_age"], repo).stdout
        status = sh(["dvc", "status", "download@vascular_age"], repo).stdout
        assert "download@vascular_age" in status and "modified" in status, status
    finally:
        csv.write_text(before)
        sh(["dvc", "repro", "--single-item", "inputs@vascular_age"], repo)
    assert "download@vascular_age" not in sh(["dvc", "status", "download@vascular_age"],
                                             repo).stdout


def test_a_failed_stage_keeps_the_committed_outputs(repo: Path) -> None:
    kept = [repo / "metrics/vascular_age/train/gbdt/train_info.json",
            repo / "metrics/vascular_age/gbdt.json",
            repo / "metrics/vascular_age/timing/train/gbdt.json"]
    before = [p.read_bytes() for p in kept]
    set_params(repo, lambda p: p["models"]["gbdt"]["hist_gbdt"].update(max_bins=300))
    try:
        r = sh(["dvc", "repro", "train_gbdt@vascular-gbdt"], repo, ok=False)
        assert r.returncode != 0 and "max_bins" in r.stdout + r.stderr
        assert [p.read_bytes() for p in kept] == before
    finally:
        set_params(repo, lambda p: p["models"]["gbdt"]["hist_gbdt"].pop("max_bins"))


def test_uci_like_table_runs_end_to_end(repo: Path) -> None:
    (repo / "mydata" / "uci.csv").write_text(uci_like(80))

    def uci(params: dict) -> None:
        dl = params["tasks"]["vascular_age"]["download"]
        dl.update(csv_path="mydata/uci.csv", csv_target_column="age", columns=UCI_MAPPING,
                  csv_separator=None)
    set_params(repo, uci)
    sh(["dvc", "repro"], repo)
    for model in ("smollm2-sft", "smollm2-head", "gbdt"):
        m = _metrics(repo, model)
        assert m["data_source"] == "csv" and m["n_test"] >= 10, model
    table = pd.read_parquet(repo / "data/interim/vascular_age/table.parquet")
    assert table["statement"].str.contains("QRS axis").any()
    assert {"f_qrs_axis_deg", "f_p_axis_deg", "f_t_axis_deg", "f_height_cm"} <= set(table)
    assert "up to date" in sh(["dvc", "status", "train_gbdt@vascular-gbdt"], repo).stdout
