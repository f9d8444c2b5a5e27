"""End to end: ``kind: table`` tasks declared in params only, through the real ``dvc repro``
with sft, head, gbdt and stack, then ``clinlm predict`` and ``clinlm ask`` on the trained runs
(issue 28). The LLM runs train on the 2-layer ``tiny_llama`` base (the stages and files are the
default's; the compute is seconds). A wide synthetic table is selected by pattern."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import copy_checkout, on_tiny_base

pytestmark = pytest.mark.slow
TABLES = ("breast_cancer", "diabetes")


def sh(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def wide_table(path: Path, n: int = 120) -> None:
    """ECG-export-like: 6 leads x 40 measurements, an id, a free-text note, a binary label."""
    rng = np.random.default_rng(1)
    cols = {f"chV{lead}_{k}": rng.normal(size=n).round(3) for lead in range(1, 7)
            for k in range(40)}
    df = pd.DataFrame({"rec": [f"r{i}" for i in range(n)], **cols,
                       "comment": [f"note {i}" for i in range(n)]})
    df["afib"] = np.where(df["chV1_0"] + rng.normal(scale=0.5, size=n) > 0, "AF", "SR")
    df.to_csv(path, index=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llama) -> Path:
    dst = tmp_path_factory.mktemp("table_e2e") / "repo"
    copy_checkout(dst, skip=("dvc.lock", "metrics"))
    wide_table(dst / "wide.csv")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=120)
    params["tasks"]["vascular_age"]["download"].update(source="synthetic", n_synthetic=30)
    params["tasks"]["vascular_age"]["images"].update(width_px=96, height_px=64)
    params["tasks"]["wide"] = {
        "kind": "table", "type": "classification", "answer": {},
        "download": {"source": "csv", "csv_path": "wide.csv", "id_column": "rec",
                     "target_column": "afib", "positive_label": "AF", "include": ["chV*_*"]},
        "prompt": {"system": "Answer Yes or No.", "question": "Atrial fibrillation?"},
        "statements": {}, "split": {}, "format": {}}  # DVC reads each section: {} = defaults
    for name in ("smollm2-sft", "smollm2-head"):
        m = params["models"][name]
        m["max_train_rows"] = 16
        m["training"].update(per_device_train_batch_size=8, logging_steps=1)
        m["predict"]["batch_size"] = 16
    params["models"]["stack"].update(n_holdout=40, n_boot=50)
    base = {"base": "smollm2-135m-instruct"}
    params["runs"] = {
        "sft": {f"{t}-sft": {"task": t, "model": "smollm2-sft", **base} for t in TABLES},
        "head": {f"{t}-head": {"task": t, "model": "smollm2-head", **base} for t in TABLES},
        "vlm": {}, "cohere": {},
        "gbdt": {f"{t}-gbdt": {"task": t, "model": "gbdt"}
                 for t in (*TABLES, "wide", "noshow", "vascular_age")},
        "stack": {f"{t}-stack": {"task": t, "model": "stack", "llm": llm, "baseline": "gbdt"}
                  for t, llm in (("breast_cancer", "smollm2-sft"), ("diabetes", "smollm2-head"))},
    }
    params["vlm_bases"] = {}
    on_tiny_base(params, tiny_llama, keep_embedded=False)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "e2e"]):
        sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], dst)
    sh(["dvc", "repro"], dst)
    return dst


def test_every_method_scored_on_both_tables(repo):
    for task, metric in (("breast_cancer", "roc_auc"), ("diabetes", "mae")):
        split = json.loads((repo / f"data/processed/{task}/split.json").read_text())
        for model in ("smollm2-sft", "smollm2-head", "gbdt", "stack"):
            m = json.loads((repo / f"metrics/{task}/{model}.json").read_text())
            assert m["n_test"] == split["n_test"] and m["n_failed"] == 0, (task, model)
            assert np.isfinite(m[metric]), (task, model)
        pred = pd.read_csv(repo / f"data/predictions/{task}/smollm2-sft.csv")
        test = pd.read_parquet(repo / f"data/processed/{task}/test.parquet")
        assert pred["id"].astype(str).tolist() == test["id"].tolist()  # every row, in order
        if task == "diabetes":  # every answer inside the declared range
            for model in ("smollm2-sft", "smollm2-head", "gbdt", "stack"):
                p = pd.read_csv(repo / f"data/predictions/{task}/{model}.csv")
                assert p["y_pred"].between(25, 346).all(), model
    gbdt = json.loads((repo / "metrics/breast_cancer/gbdt.json").read_text())
    assert gbdt["roc_auc"] > 0.95  # the real table is easy for trees
    summary = (repo / "metrics/summary.md").read_text()
    assert "## breast_cancer" in summary and "## diabetes" in summary and "## wide" in summary


def test_wide_table_selected_by_pattern(repo):
    info = json.loads((repo / "data/raw/wide/download.json").read_text())
    assert len(info["used"]) == 240 and all(u["kind"] == "number" for u in info["used"])
    reasons = {d["column"]: d["reason"] for d in info["dropped"]}
    assert set(reasons) == {"rec", "comment", "afib"}
    assert reasons["comment"].startswith("not mapped and matched by no include")
    assert json.loads((repo / "metrics/wide/gbdt.json").read_text())["roc_auc"] > 0.6


def test_predict_and_ask_a_table_run(repo, tmp_path):
    from clinlm.table.task import sklearn_frame
    rows = sklearn_frame("breast_cancer").drop(columns=["target"]).head(3).astype(object)
    rows.loc[1, "mean radius"] = "big"
    rows.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "out.csv"
    r = sh([sys.executable, "-m", "clinlm", "predict", "--run", "breast_cancer-gbdt", "--input",
            str(tmp_path / "new.csv"), "--output", str(out)], repo, ok=False)
    assert out.exists(), r.stderr[-2000:]
    partial = rows.drop(columns=["worst area"])
    partial.to_csv(tmp_path / "partial.csv", index=False)
    r = sh([sys.executable, "-m", "clinlm", "predict", "--run", "breast_cancer-gbdt", "--input",
            str(tmp_path / "partial.csv"), "--output", str(tmp_path / "p.csv")], repo, ok=False)
    assert r.returncode == 2 and "missing column(s) ['worst area']" in r.stderr
    got = pd.read_csv(out)
    assert got["status"].tolist() == ["ok", "refused", "ok"]
    assert got["p_yes"].notna().tolist() == [True, False, True]
    assert got.loc[1, "field"] == "mean radius" and "not a number" in got.loc[1, "error"]
    r = sh([sys.executable, "-m", "clinlm", "ask", "--run", "diabetes-sft", "--format", "json",
            "--field", "age=50", "--field", "bmi=31", "--field", "s6=99"], repo)
    answer = json.loads(r.stdout)
    assert 25 <= answer["prediction"] <= 346
    assert "Not recorded:" in answer["statement"]
    r = sh([sys.executable, "-m", "clinlm", "ask", "--run", "diabetes-sft", "--list-fields"], repo)
    assert "Body mass index" in r.stdout
