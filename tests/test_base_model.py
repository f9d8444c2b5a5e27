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




def run_materialize(source: str, out, hub: FakeHub, token: str | None, home,
                    **kwargs) -> subprocess.CompletedProcess:
    """In a fresh process: huggingface_hub reads HF_ENDPOINT when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
               PYTHONPATH=str(ROOT))
    if token:
        env["HF_TOKEN"] = token
    code = ("import json, sys; from clinlm.base_model import materialize; "
            "print(json.dumps(materialize(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))))")
    return subprocess.run([sys.executable, "-c", code, source, str(out), json.dumps(kwargs)],
                          env=env,
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


def test_hub_download_is_pinned_and_filtered(tmp_path):
    """``revision`` fetches that commit even after a push; a branch is resolved to its commit
    and recorded; without one main is taken, recorded and the log says how to pin it;
    ``ignore_patterns`` / ``allow_patterns`` skip files (Llama's ``original/`` copy)."""
    from tests.fake_hub import SHA
    newer = {**FILES, "config.json": b'{"model_type": "idefics", "v": 2}',
             "original/consolidated.00.pth": b"weights twice"}
    with FakeHub({"org/m": FILES}, token="hf_t") as hub:
        head = hub.push("org/m", newer)
        old = run_materialize("org/m", tmp_path / "old", hub, "hf_t", tmp_path / "h",
                              revision=SHA, key="base_models.m")
        main = run_materialize("org/m", tmp_path / "main", hub, "hf_t", tmp_path / "h",
                               revision="main", ignore_patterns=["original/*"])
        loose = run_materialize("org/m", tmp_path / "loose", hub, "hf_t", tmp_path / "h",
                                key="base_models.m")
        only = run_materialize("org/m", tmp_path / "only", hub, "hf_t", tmp_path / "h",
                               revision=head, allow_patterns=["*.json"])
        bad = run_materialize("org/m", tmp_path / "bad", hub, "hf_t", tmp_path / "h",
                              revision="f" * 40)
    for r in (old, main, loose, only):
        assert r.returncode == 0, r.stderr[-2000:]
    rec = {name: json.loads((tmp_path / name / "materialized.json").read_text())
           for name in ("old", "main", "loose", "only")}
    assert (tmp_path / "old/config.json").read_bytes() == FILES["config.json"]
    assert not (tmp_path / "old/original").exists()
    assert rec["old"]["revision"] == SHA and rec["old"]["requested_revision"] == SHA
    assert (tmp_path / "main/config.json").read_bytes() == newer["config.json"]
    assert not (tmp_path / "main/original").exists()  # ignored: not downloaded twice
    assert rec["main"]["revision"] == head and rec["main"]["requested_revision"] == "main"
    assert (tmp_path / "loose/original/consolidated.00.pth").exists()
    assert rec["loose"]["revision"] == head and rec["loose"]["requested_revision"] is None
    assert f"not pinned; took main at {head}" in loose.stderr
    assert "not pinned" not in old.stderr + main.stderr
    assert sorted(str(p.relative_to(tmp_path / "only")) for p in (tmp_path / "only").rglob("*")
                  if p.is_file()) == ["config.json", "materialized.json", "sub/tokenizer.json"]
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()


def test_hub_keys_are_refused_for_other_sources(tmp_path):
    """``revision`` on a local folder or the embedded GGUF would be silently ignored: an error
    naming the key instead."""
    import pytest
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes(b"{}")
    with pytest.raises(ValueError, match="base_models.x: revision only apply to a Hugging Face"):
        materialize(str(src), tmp_path / "out", revision="main", key="base_models.x")
    with pytest.raises(ValueError, match="allow_patterns only apply .* is embedded"):
        materialize("embedded:smollm2", tmp_path / "out", allow_patterns=["*.json"])
    assert not (tmp_path / "out").exists()
