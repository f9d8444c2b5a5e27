"""Enabling the cohere run without CO_API_KEY stops at the first stage, before any work."""

import copy

import pytest

from clinlm.params import load_params, preflight
from tests.conftest import ROOT


def test_cohere_run_without_key_stops_before_work(monkeypatch):
    monkeypatch.delenv("CO_API_KEY", raising=False)
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    preflight(params)  # the default runs need no key
    params["runs"]["cohere"]["noshow-cohere"] = {"task": "noshow", "model": "cohere-api"}
    with pytest.raises(Exception, match="CO_API_KEY"):
        preflight(params)
    monkeypatch.setenv("CO_API_KEY", "test-key-not-real")
    preflight(params)


def test_every_stage_runs_as_a_module_of_the_checkout():
    """``python -m stages.<name>`` from the repo root imports the ``clinlm`` of the checkout DVC
    runs in (an experiment's temp copy too); ``python stages/<name>.py`` imported the editable
    install's folder instead (tests/test_dvc_experiments.py runs the real thing)."""
    import re

    import yaml

    assert (ROOT / "stages" / "__init__.py").is_file()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        match = re.fullmatch(r"python -m stages\.(\w+)(\s.*)?", cmd)
        assert match, f"{name}: {cmd!r} is not `python -m stages.<module> ...`"
        assert (ROOT / "stages" / f"{match[1]}.py").is_file(), (name, cmd)
