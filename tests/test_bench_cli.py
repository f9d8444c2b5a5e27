"""bench/bench.py's command line: `--only X --out NEW_DIR` keeps the other parts from the
committed results (it crashed on a folder without results.json, issue 29)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT


def test_only_into_a_new_folder_keeps_the_committed_parts(tmp_path, capsys):
    from bench.bench import previous_parts
    committed = json.loads((ROOT / "bench" / "results.json").read_text())["parts"]
    assert previous_parts(tmp_path) == committed
    assert "come from" in capsys.readouterr().out
    (tmp_path / "results.json").write_text(json.dumps({"parts": {"predict": {"x": 1}}}))
    assert previous_parts(tmp_path) == {"predict": {"x": 1}}  # the folder's own first


def test_only_without_any_results_says_what_to_run(tmp_path, monkeypatch):
    import bench.bench as b
    monkeypatch.setattr(b, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="run `make bench`"):
        b.previous_parts(tmp_path / "new")
