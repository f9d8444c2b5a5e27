"""base_model stage: a Hub repo id is downloaded as published (the real huggingface_hub
client against a local server speaking the Hub API), a folder is copied, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from clinlm.base_model import materialize
from tests.conftest import ROOT
from tests.fake_hub import FakeHub

FILES = {"config.json": b'{"model_type": "idefics"}', "model.safetensors": bytes(range(256)) * 40,
         "sub/tokenizer.json": b"{}"}




def run_materialize(source: str, out, hub: FakeHub, token: str | None, home) -> subprocess.CompletedProcess:
    """In a fresh process: huggingface_hub reads HF_ENDPOINT when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
               PYTHONPATH=str(ROOT))
    if token:
        env["HF_TOKEN"] = token
    code = ("import json, sys; from clinlm.base_model import materialize; "
            "print(json.dumps(materialize(sys.argv[1], sys.argv[2])))")
    return subprocess.run([sys.executable, "-c", code, source, str(out)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_hub_repo_downloaded_as_published_with_the_env_token(tmp_path):
    with FakeHub({"org/gated-model": FILES}, token="hf_secret") as hub:
        r = run_materialize("org/gated-model", tmp_path / "out", hub, "hf_secret", tmp_path / "h")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert not (out / ".cache").exists()
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["files"] == len(FILES) and json.loads((out / "materialized.json").read_text())
    repo = [auth for _, path, auth in hub.requests if "gated-model" in path]
    assert repo and all(auth == "Bearer hf_secret" for auth in repo)
    assert "hf_secret" not in r.stdout + r.stderr  # the token is never printed


def test_a_failed_download_leaves_nothing(tmp_path):
    with FakeHub({"org/gated-model": FILES}, token="hf_secret") as hub:
        missing = run_materialize("org/missing", tmp_path / "a", hub, "hf_secret", tmp_path / "h")
        no_token = run_materialize("org/gated-model", tmp_path / "b", hub, None, tmp_path / "h")
    for r, out in ((missing, "a"), (no_token, "b")):
        assert r.returncode != 0
        assert not (tmp_path / out).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("h",)]


def test_local_folder_is_copied(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    info = materialize(str(src), tmp_path / "out")
    assert (tmp_path / "out/sub/tokenizer.json").read_bytes() == b"{}"
    assert info["bytes"] == sum(map(len, FILES.values()))
