"""``python -m clinlm release``: a trained run to a private Hub repo, through the real
huggingface_hub client against a local server speaking the Hub API (tests/fake_hub.py).

The fake speaks the LFS upload protocol; the Xet protocol (huggingface_hub's default when
hf_xet is installed) is switched off with ``HF_HUB_DISABLE_XET``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_sft_cfg, waits_rows
from tests.fake_hub import FakeHub

TOKEN = "hf_test_secret_token_123"
RUN = "noshow-smollm2-sft"
MODEL_DIR = Path("data/models/noshow/smollm2-sft")
HUB_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def build_project(root: Path, base: Path, train: bool = True) -> Path:
    """A checkout-like folder: params.yaml whose smollm2-sft is the tiny model, the base
    folder (a link to ``base``), the trained run and its metrics (as the stages write them)."""
    import yaml

    from clinlm.io import write_json

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"]["smollm2-sft"] = tiny_sft_cfg("data/models/base/smollm2-135m-instruct",
                                                   epochs=1, description="tiny test model")
    (root / "data/models/base").mkdir(parents=True)
    (root / "data/models/base/smollm2-135m-instruct").symlink_to(base)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        if train:
            from clinlm.methods.sft import SFTMethod
            from clinlm.metrics import split_timing
            from clinlm.runs import make_run
            run = make_run(RUN)
            info, _ = split_timing(SFTMethod().train(run, waits_rows(16)))
            write_json(run.model_dir / "train_info.json", info)
        for model, auc in (("smollm2-sft", 0.61), ("gbdt", 0.68)):
            write_json(root / f"metrics/noshow/{model}.json",
                       {"roc_auc": auc, "pr_auc": 0.3, "brier": 0.16, "accuracy": 0.8, "f1": 0.0,
                        "recall": 0.0, "n_test": 400, "n_failed": 0, "data_source": "synthetic"})
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def trained_project(tiny_llama, tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("project"), tiny_llama)


@pytest.fixture
def project(trained_project, tmp_path, monkeypatch) -> Path:
    """A private copy of the trained project, as the working directory."""
    root = tmp_path / "p"
    shutil.copytree(trained_project, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants
    with FakeHub(token=TOKEN) as h:
        monkeypatch.setattr(constants, "ENDPOINT", h.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield h


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def release(*extra: str, repo: str = "me/noshow-sft") -> int:
    from clinlm.release import main
    return main(["--run", RUN, "--repo", repo, *extra])


def test_release_uploads_a_private_repo_with_card_and_adapter(project, hub, capsys, caplog):
    import logging

    from huggingface_hub import ModelCard
    caplog.set_level(logging.DEBUG)
    before = snapshot(project / MODEL_DIR)
    assert release() == 0
    repo = hub.repos["me/noshow-sft"]
    # private by default: the flag is sent and the repo is private
    assert hub.created == [{"name": "noshow-sft", "organization": "me", "visibility": "private"}]
    assert hub.private["me/noshow-sft"] is True
    # the token went as Bearer on every API call (the LFS PUT is a presigned URL: none)
    # (huggingface_hub's own once-a-day, token-less fetch of its agent-harness registry, which
    # depends on the environment, is not one of the release's calls)
    api_calls = [r for r in hub.requests if not r[1].startswith(("/_lfs/", "/api/agent-harnesses"))]
    assert api_calls and all(auth == f"Bearer {TOKEN}" for _, _, auth in api_calls)
    assert all(auth is None for m, p, auth in hub.requests if p.startswith("/_lfs/"))
    # the files arrive with their bytes; the adapter through LFS
    local = {p.name: p.read_bytes() for p in (project / MODEL_DIR).iterdir()}
    assert set(repo) == (set(local) - {"README.md"}) | {"README.md"}
    for name, data in local.items():
        if name not in ("README.md", "adapter_config.json"):
            assert repo[name] == data, name
    sha = hashlib.sha256(local["adapter_model.safetensors"]).hexdigest()
    assert hub.lfs[sha] == local["adapter_model.safetensors"]
    assert ("PUT", f"/_lfs/{sha}", None) in hub.requests
    # the adapter config points at the base's Hub id, not the local folder
    cfg = json.loads(repo["adapter_config.json"])
    assert cfg["base_model_name_or_path"] == HUB_BASE
    assert {k: v for k, v in cfg.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in json.loads(local["adapter_config.json"]).items()
        if k != "base_model_name_or_path"}
    card = ModelCard(repo["README.md"].decode())
    assert card.data.base_model == HUB_BASE and card.data.library_name == "peft"
    assert len(hub.commits["me/noshow-sft"]) == 1
    # the local model folder is untouched, no staging folder is left
    assert snapshot(project / MODEL_DIR) == before
    assert not [p for p in (project / "data/work").rglob(".release-*")]
    out = capsys.readouterr()
    assert "released" in out.out and "private" in out.out
    assert TOKEN not in out.out + out.err + caplog.text


def test_a_second_release_of_the_same_run_commits_nothing(project, hub, capsys):
    assert release() == 0
    n_requests = len(hub.requests)
    assert release() == 0
    assert len(hub.commits["me/noshow-sft"]) == 1
    second = [p for _, p, _ in hub.requests[n_requests:]]
    assert not [p for p in second if "/commit/" in p or "/preupload/" in p or "/_lfs/" in p]
    assert "nothing to upload" in capsys.readouterr().out
    # a changed metric changes the card only: one commit, and the Hub's own check keeps the
    # unchanged files out of it
    m = project / "metrics/noshow/smollm2-sft.json"
    m.write_text(m.read_text().replace("0.61", "0.63"))
    assert release() == 0
    commits = hub.commits["me/noshow-sft"]
    assert len(commits) == 2 and commits[-1]["paths"] == ["README.md"]
    assert b"0.630" in hub.repos["me/noshow-sft"]["README.md"]


@pytest.mark.parametrize("failure", [500, "reset"])
def test_a_failure_mid_upload_is_clear_and_harmless(project, hub, capsys, failure):
    before = snapshot(project / MODEL_DIR)
    hub.fail["commit"] = failure
    assert release() == 1
    err = capsys.readouterr().err
    assert "release failed" in err and "failed while uploading" in err and "commit" in err
    assert ("500" in err) if failure == 500 else ("Error" in err)
    assert "me/noshow-sft@main" in err and TOKEN not in err
    assert hub.commits["me/noshow-sft"] == [] and hub.repos["me/noshow-sft"] == {}
    assert snapshot(project / MODEL_DIR) == before
    assert not [p for p in (project / "data/work").rglob(".release-*")]
    assert release() == 0  # the same command again finishes the job
    assert len(hub.commits["me/noshow-sft"]) == 1


def test_no_token_no_request(project, hub, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert release() == 1
    assert "HF_TOKEN is not set" in capsys.readouterr().err
    assert hub.requests == []


def test_an_existing_public_repo_needs_public(project, hub, capsys):
    hub.repos["me/open"], hub.heads["me/open"] = {}, "f" * 40
    hub.private["me/open"], hub.branches["me/open"], hub.commits["me/open"] = False, {"main"}, []
    assert release(repo="me/open") == 1
    assert "PUBLIC" in capsys.readouterr().err and hub.commits["me/open"] == []
    assert release("--public", repo="me/open") == 0
    assert len(hub.commits["me/open"]) == 1


def test_release_to_a_branch(project, hub):
    assert release("--revision", "v1") == 0
    assert "v1" in hub.branches["me/noshow-sft"]
    assert hub.commits["me/noshow-sft"][0]["revision"] == "v1"


def test_an_untrained_run_is_named(tmp_path, tiny_llama, hub, capsys, monkeypatch):
    build_project(tmp_path, tiny_llama, train=False)
    monkeypatch.chdir(tmp_path)
    assert release() == 1
    assert "no trained model for noshow/smollm2-sft" in capsys.readouterr().err
    assert hub.requests == []


@pytest.mark.slow
def test_the_token_never_reaches_the_output_even_in_debug_mode(project, hub):
    """In a fresh process with huggingface_hub's HF_DEBUG (it logs every request as curl)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_DEBUG="1",
               HF_HOME=str(project / "hf-home"), PYTHONPATH=str(ROOT))
    code = ("import sys; from clinlm.release import main; "
            "sys.exit(main(['--run', sys.argv[1], '--repo', 'me/debug']))")
    r = subprocess.run([sys.executable, "-c", code, RUN], cwd=project, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "curl" in r.stderr  # the debug log is on ...
    assert TOKEN not in r.stdout + r.stderr  # ... and the token is not in it
    assert len(hub.commits["me/debug"]) == 1


@pytest.mark.slow
def test_release_with_the_merged_weights(project, hub):
    assert release("--include-merged") == 0
    repo = hub.repos["me/noshow-sft"]
    assert {"merged/config.json", "merged/model.safetensors", "merged/tokenizer.json"} <= set(repo)
    assert "quantization_config" not in json.loads(repo["merged/config.json"])
    assert b'repo_path("merged")' in repo["README.md"]  # the card's code loads them
    assert release("--include-merged") == 0  # the export is deterministic: still a no-op
    assert len(hub.commits["me/noshow-sft"]) == 1


def test_the_hub_is_asked_before_anything_is_built_and_nothing_is_left(project, hub, capsys,
                                                                       monkeypatch):
    """A wrong token (or a public repo) stops the release before the staging -- the merged
    export with --include-merged takes minutes -- and no scratch folder remains; a release
    that goes through leaves none either."""
    import clinlm.release as rel
    staged = []
    real_stage = rel.stage

    def spy(*args, **kwargs):
        staged.append(list(hub.created))  # what the Hub had been asked when staging began
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(rel, "stage", spy)
    assert not (project / "data/work").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    assert release("--include-merged") == 1
    assert "failed while creating the repo" in capsys.readouterr().err
    assert staged == [] and not (project / "data/work").exists()
    hub.repos["me/open"], hub.heads["me/open"] = {}, "f" * 40
    hub.private["me/open"], hub.branches["me/open"], hub.commits["me/open"] = False, {"main"}, []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert release("--include-merged", repo="me/open") == 1
    assert staged == [] and not (project / "data/work").exists()
    assert release() == 0
    assert len(staged) == 1 and staged[0]  # the repo was created before the staging
    assert not (project / "data/work").exists()
