"""`dvc exp run --temp` (and `--queue`) run the code of the experiment's own snapshot.

The editable install maps ``clinlm`` to the one folder ``pip install -e .`` ran in. A stage run
as ``python stages/x.py`` puts ``stages/`` first on ``sys.path``, so ``import clinlm`` went
through that mapping: an experiment in a temporary copy silently ran the main workspace's code.
The stages run as ``python -m stages.x`` from the root of the checkout DVC runs them in, which
puts that checkout first on ``sys.path``. This test tries a code change as a temp experiment in a
throwaway git + DVC repo and checks which ``clinlm`` the stage imported.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_checkout

# ~8-10 s on 2 cores (dvc + one real stage): kept in `make test-fast`
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")

STAGE = "download"  # the cheapest real stage that imports clinlm (synthetic data, no model)
COPIED = ["clinlm", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore"]
MARKER_ENV = "CLINLM_TEST_IMPORT_MARKER"
# appended to the copy's clinlm/__init__.py: every process importing clinlm names the file it got
MARKER_CODE = f"""
import os as _os
if _os.environ.get("{MARKER_ENV}"):
    with open(_os.environ["{MARKER_ENV}"], "a") as _f:
        _f.write(__file__ + "\\n")
"""


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def test_temp_experiment_imports_its_own_clinlm(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_checkout(repo, only=COPIED)
    # deps are not under test here (test_pipeline_e2e runs the whole graph): keep the ones that
    # exist, so the check of which code ran does not hinge on the dep lists being current
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    stage = pipeline["stages"][STAGE]["do"]
    stage["deps"] = [d for d in stage["deps"] if "$" in d or (repo / d).exists()]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    marker = tmp_path / "imported_from.txt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           MARKER_ENV: str(marker), "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "PYTHONSAFEPATH"):
        env.pop(key, None)
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], repo, env)
    run(dvc + ["init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)

    # the code change being tried, uncommitted, as a user would try it
    init = repo / "clinlm" / "__init__.py"
    init.write_text(init.read_text() + MARKER_CODE)
    run(dvc + ["exp", "run", "--temp", f"{STAGE}@noshow",
               "-S", "tasks.noshow.download.source=synthetic",
               "-S", "tasks.noshow.download.n_synthetic=50"], repo, env)

    assert marker.exists(), ("the stage imported a clinlm without the experiment's change "
                             "(the editable install's folder, not the experiment's copy)")
    imported = {Path(line) for line in marker.read_text().splitlines()}
    temp_root = (repo / ".dvc" / "tmp" / "exps").resolve()
    assert imported and all(p.resolve().is_relative_to(temp_root) for p in imported), imported
    assert (ROOT / "clinlm" / "__init__.py").resolve() not in {p.resolve() for p in imported}
    assert not (repo / "data" / "raw" / "noshow").exists()  # ran in the temp copy, not here
