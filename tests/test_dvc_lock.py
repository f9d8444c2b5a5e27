"""dvc.lock holds only the stages dvc.yaml defines, and every committed output persists.

A lock entry of a stage that no longer exists (a renamed foreach group, a deleted module)
is never refreshed by ``dvc repro``: it misleads a reader about what produced the files, and
``dvc status`` stays silent about it. Committed outputs (``cache: false``) are
``persist: true`` so a failed run leaves them as they were (dvc.yaml's header).
"""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def defined_stages() -> dict[str, object]:
    """The expanded stages of dvc.yaml (``name@key`` per foreach item), by DVC itself."""
    from dvc.repo import Repo
    with Repo(str(ROOT)) as repo:
        return {s.addressing.split(":")[-1]: s for s in repo.index.stages}


def test_every_lock_entry_is_a_current_stage():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stages = defined_stages()
    stale = sorted(set(lock) - set(stages))
    assert not stale, f"dvc.lock has {len(stale)} entries of stages dvc.yaml no longer " \
                      f"defines (remove them): {stale}"
    assert set(lock) == set(stages), f"never run: {sorted(set(stages) - set(lock))}"


def test_every_committed_output_persists():
    loose = [f"{name}: {out.def_path}" for name, stage in defined_stages().items()
             for out in stage.outs if not out.use_cache and not out.persist]
    assert not loose, f"cache: false outputs without persist: true: {loose}"
