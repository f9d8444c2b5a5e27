"""Enabling the cohere run without CO_API_KEY stops at the first stage, before any work."""

import copy

import pytest

from clinlm.params import load_params
from clinlm.pipeline import preflight
from tests.conftest import ROOT


def test_cohere_run_without_key_stops_before_work(monkeypatch):
    monkeypatch.delenv("CO_API_KEY", raising=False)
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    preflight(params)  # the default runs need no key
    params["runs"]["noshow-cohere"] = {"task": "noshow", "model": "cohere-api"}
    with pytest.raises(Exception, match="CO_API_KEY"):
        preflight(params)
    monkeypatch.setenv("CO_API_KEY", "test-key-not-real")
    preflight(params)
