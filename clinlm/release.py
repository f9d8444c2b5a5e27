"""``python -m clinlm release --run <run> --repo <namespace/name>``: a trained run to the Hub.

Uploads the run's model folder (the LoRA adapter, its tokenizer, ``train_info.json``, ...)
with a generated model card (:mod:`clinlm.modelcard`) and, with ``--include-merged``, the
merged weights (:mod:`clinlm.export`) under ``merged/``, to a Hugging Face Hub repo that is
PRIVATE unless ``--public`` is given -- and an existing public repo is refused without it.
The token comes from ``HF_TOKEN`` in the environment only (never params, never the local
huggingface login), and is never printed or written.

Why a command and not a DVC stage: publishing is a side effect on an external service, not
a reproducible output DVC could cache or compare; as a stage it would re-run (re-publish)
whenever any upstream file changed, and every `dvc repro` would need a write token.

Safety:
* the upload is staged in a temporary folder (the adapter config's local base path replaced
  by the base's Hub id, peft's placeholder README replaced by the card); the model folder is
  only read, so a failure at any point leaves it byte-identical;
* a re-release of the same content is a no-op: the remote files' hashes (git blob sha1, or
  the LFS sha256) are compared with the staged files first, and nothing is committed when
  all match (the Hub would also drop unchanged files, but this needs no upload at all);
* a Hub commit is atomic: a failed upload commits nothing, and re-running resumes it;
* the Hub is contacted (repo, visibility, branch) before anything is built, and the staging
  folder, with any scratch folder made for it, is gone afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from clinlm.io import sha256_file

log = logging.getLogger(__name__)

SKIP = {"README.md", "training_args.bin", "checkpoints"}  # peft's placeholder card, scratch


class ReleaseError(RuntimeError):
    """A release that cannot go on; the message says what failed and what to do."""


def hf_token() -> str:
    """The write token from ``HF_TOKEN`` (the only place it is read from)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise ReleaseError("HF_TOKEN is not set: create a WRITE token at "
                           "https://huggingface.co/settings/tokens and `export HF_TOKEN=...` "
                           "(it is read from the environment only, never from a file)")
    return token


def stage(run: Any, params: dict[str, Any], run_name: str, repo_id: str, folder: Path,
          merged: bool = False) -> list[str]:
    """Fill ``folder`` with what the repo gets; returns the repo paths, sorted."""
    from clinlm.export import check_trained
    from clinlm.modelcard import base_hub_id, render_card

    check_trained(run)
    for src in sorted(run.model_dir.iterdir()):
        if src.name in SKIP or src.name.startswith("."):
            continue
        if src.is_dir():
            shutil.copytree(src, folder / src.name)
        else:
            shutil.copy2(src, folder / src.name)
    hub, _ = base_hub_id(params, run_name)
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.exists() and hub:  # a local path is useless to anyone loading the repo
        cfg = json.loads(adapter_cfg.read_text())
        cfg["base_model_name_or_path"] = hub
        adapter_cfg.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if merged:
        from clinlm.export import export_run
        export_run(run, folder / "merged")
    (folder / "README.md").write_text(render_card(run, params, run_name, repo_id, merged=merged))
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def changed_files(folder: Path, paths: list[str], remote: dict[str, Any]) -> list[str]:
    """The staged ``paths`` whose content differs from the remote ``{path: RepoFile}``."""
    out = []
    for rel in paths:
        local, entry = folder / rel, remote.get(rel)
        if entry is None or entry.size != local.stat().st_size:
            out.append(rel)
        elif entry.lfs is not None:
            if entry.lfs.sha256 != sha256_file(local):
                out.append(rel)
        elif entry.blob_id != _git_blob_sha1(local):
            out.append(rel)
    return out


def _hub_step(repo_id: str, revision: str, step: str, e: Exception) -> ReleaseError:
    """A Hub failure (HfHubHTTPError, connection errors) as an error naming the step."""
    return ReleaseError(f"release to {repo_id}@{revision} failed while {step}: "
                        f"{type(e).__name__}: {str(e).rstrip('.')}. Nothing was committed by "
                        "this step; the local model folder is unchanged; run the same command "
                        "again to retry")


def open_repo(api: Any, repo_id: str, revision: str, public: bool) -> bool:
    """Create the repo (private unless ``public``) and the branch; returns whether it is
    private. Runs before anything is built: a bad token, a public repo or an unreachable Hub
    stop the release before a merged export (minutes, GBs) is made for nothing."""
    step = "creating the repo"
    try:
        api.create_repo(repo_id, private=not public, exist_ok=True)
        step = "reading the repo's visibility"
        private = bool(api.model_info(repo_id).private)
        if not private and not public:
            raise ReleaseError(f"{repo_id} exists and is PUBLIC: pass --public to release to it, "
                               "or make it private on the Hub first; nothing was uploaded")
        if revision != "main":
            step = f"creating branch {revision}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return private
    except ReleaseError:
        raise
    except Exception as e:
        raise _hub_step(repo_id, revision, step, e) from e


def publish(api: Any, folder: Path, paths: list[str], repo_id: str, revision: str,
            private: bool, message: str) -> dict[str, Any]:
    """Commit what changed (or nothing) to the repo :func:`open_repo` opened."""
    from huggingface_hub.errors import RevisionNotFoundError

    step = "listing the remote files"
    try:
        try:
            remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=revision,
                                                            recursive=True)
                      if hasattr(f, "blob_id")}
        except RevisionNotFoundError:
            remote = {}
        todo = changed_files(folder, paths, remote)
        if not todo:
            return {"repo": repo_id, "revision": revision, "changed": [], "commit": None,
                    "private": private}
        step = f"uploading {len(todo)} changed file(s) (LFS upload + commit)"
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=message)
        return {"repo": repo_id, "revision": revision, "changed": todo, "private": private,
                "commit": getattr(info, "oid", None), "url": getattr(info, "commit_url", None)}
    except Exception as e:
        raise _hub_step(repo_id, revision, step, e) from e


def _made_dirs(path: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` of ``path`` would create, deepest first."""
    out = []
    while not path.exists():
        out.append(path)
        path = path.parent
    return out


def release(run_name: str, repo_id: str, *, params_path: str | Path = "params.yaml",
            public: bool = False, include_merged: bool = False,
            revision: str = "main") -> dict[str, Any]:
    """Open the Hub repo, then stage and publish ``run_name`` (see module docstring).

    The order: the token, the run's trained folder, the Hub (repo, visibility, branch), and
    only then the staging (the merged export with ``--include-merged``). Nothing is left
    behind: the staging folder and any scratch folder made for it are removed.
    """
    from huggingface_hub import HfApi

    from clinlm.export import check_trained
    from clinlm.params import load_params
    from clinlm.runs import make_run

    token = hf_token()  # first: no work without a token
    params = load_params(params_path)
    run = make_run(run_name, params)
    check_trained(run)
    api = HfApi(token=token)
    private = open_repo(api, repo_id, revision, public)
    scratch = Path(run.work_dir) if run.work_dir else None  # same disk as the model (GBs)
    made = _made_dirs(scratch) if scratch else []
    if scratch:
        scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".release-", dir=scratch) as tmp:
            folder = Path(tmp)
            paths = stage(run, params, run_name, repo_id, folder, merged=include_merged)
            result = publish(api, folder, paths, repo_id, revision, private,
                             f"Release {run_name} ({run.task}/{run.model})")
    finally:
        for d in made:  # deepest first; a folder something else wrote into stays
            try:
                d.rmdir()
            except OSError:
                break
    return {**result, "files": paths}


def _scrub(text: str) -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    return text.replace(token, "***") if token else text


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit code (0 released or already up to date, 1 failed, 2 usage)."""
    from clinlm.params import ParamsError
    from clinlm.paths import setup_logging

    ap = argparse.ArgumentParser(prog="python -m clinlm release",
                                 description="Upload a trained run to a (private) Hub repo.")
    ap.add_argument("--run", required=True, help="a runs.<method>.<name> entry of params.yaml")
    ap.add_argument("--repo", required=True, help="namespace/name on the Hugging Face Hub")
    ap.add_argument("--public", action="store_true", help="make a NEW repo public (default private)")
    ap.add_argument("--include-merged", action="store_true",
                    help="also upload the merged weights (python -m clinlm export) under merged/")
    ap.add_argument("--revision", default="main", help="branch to commit to (created if missing)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)
    setup_logging()
    if args.repo.count("/") != 1:
        print(f"release: --repo {args.repo!r} must be namespace/name", file=sys.stderr)
        return 2
    try:
        res = release(args.run, args.repo, params_path=args.params, public=args.public,
                      include_merged=args.include_merged, revision=args.revision)
    except (ReleaseError, ParamsError, OSError, ValueError) as e:
        print(_scrub(f"release failed: {e}"), file=sys.stderr)
        return 1
    where = f"{res['repo']}@{res['revision']} ({'private' if res['private'] else 'public'})"
    if not res["changed"]:
        print(f"{where} already holds these {len(res['files'])} files: nothing to upload")
    else:
        print(f"released {args.run} to {where}: {len(res['changed'])} of {len(res['files'])} "
              f"files changed, commit {res['commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
