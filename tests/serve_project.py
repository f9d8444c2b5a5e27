"""A temporary project with trained runs for the ask / serve / page tests (no `make repro`).

The project is the repo's own params.yaml with small synthetic data, the gbdt runs of both
tasks and an sft run on the tiny random Llama (the real SFT code path, real tokenizer), and a
stack of those two on noshow (trained only for the tests that ask for it). It is built once
per test session (a marker file under pytest's session temp folder), whichever test module
asks first.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import yaml

from tests.conftest import ROOT, tiny_sft_cfg

SFT_RUN = "noshow-tiny-sft"
STACK_RUN = "noshow-tiny-stack"
GBDT_RUNS = ("noshow-gbdt", "vascular-gbdt")


def build_project(tmp_path_factory, tiny_llama: Path | None = None, stack: bool = False) -> Path:
    """The project folder (params.yaml + data/models/...); trains what is not trained yet.

    ``tiny_llama``: also train the sft run ``SFT_RUN`` on that base (imports torch);
    ``stack``: also the stack ``STACK_RUN`` of that sft run and noshow-gbdt (needs both).
    """
    root = tmp_path_factory.getbasetemp() / "serve_project"
    root.mkdir(exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=300)
    params["tasks"]["vascular_age"]["download"].update(source="synthetic", n_synthetic=40)
    params["base_models"] = {"tiny": {"source": str(tiny_llama or "unused"), "dtype": "float32"}}
    params["vlm_bases"] = {}
    params["models"] = {"gbdt": {**params["models"]["gbdt"],
                                 "hist_gbdt": {"max_iter": 30, "min_samples_leaf": 5}},
                        "tiny-sft": tiny_sft_cfg("data/models/base/tiny", epochs=1,
                                                 max_train_rows=32),
                        "tiny-stack": {"method": "stack", "n_holdout": 40, "folds": 2,
                                       "n_boot": 20}}
    params["runs"] = {"sft": {SFT_RUN: {"task": "noshow", "model": "tiny-sft", "base": "tiny"}},
                      "head": {}, "vlm": {}, "cohere": {},
                      "gbdt": {"noshow-gbdt": {"task": "noshow", "model": "gbdt"},
                               "vascular-gbdt": {"task": "vascular_age", "model": "gbdt"}},
                      "stack": {STACK_RUN: {"task": "noshow", "model": "tiny-stack",
                                            "llm": "tiny-sft", "baseline": "gbdt"}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    todo = list(GBDT_RUNS) + ([SFT_RUN] if tiny_llama else [])
    todo += [STACK_RUN] if stack and tiny_llama else []
    with contextlib.chdir(root):
        for run_name in todo:
            if not (root / "trained" / run_name).exists():
                _train(params, run_name, tiny_llama)
                (root / "trained").mkdir(exist_ok=True)
                (root / "trained" / run_name).touch()
    return root


def _train(params: dict, run_name: str, tiny_llama: Path | None) -> None:
    from clinlm.methods import get_method
    from clinlm.paths import raw_dir
    from clinlm.runs import make_run
    from clinlm.tasks import build_table, download

    run = make_run(run_name, params)
    table_file = Path("data") / "interim" / run.task / "table.parquet"
    if not table_file.exists():
        download(run.task, params["tasks"][run.task], params["seed"], raw_dir(run.task))
        table_file.parent.mkdir(parents=True, exist_ok=True)
        build_table(run.task, params["tasks"][run.task], raw_dir(run.task)).to_parquet(table_file)
    import pandas as pd
    table = pd.read_parquet(table_file)
    if run.cfg["method"] == "sft" and not Path("data/models/base/tiny").exists():
        shutil.copytree(tiny_llama, "data/models/base/tiny")
    get_method(run.cfg["method"]).train(run, table)


@contextlib.contextmanager
def running_server(project: Path, runs: list[str], *extra: str, timeout: float = 180):
    """``python -m clinlm serve`` in a real process on a free 127.0.0.1 port.

    Yields ``(base_url, log_path)``; the process is stopped (SIGTERM, then SIGKILL) after.
    """
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    log_path = project / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "clinlm", "serve", "--port", str(port), *extra]
    for r in runs:
        cmd += ["--run", r]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up in {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
