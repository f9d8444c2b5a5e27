"""bench/fewshot_curve.py builds a curve over several calls (issue 28): a resumed call computes
only the missing (method, rows, seed) points, the LLMs train on several subsamples only where
rows are few and not above --llm-max-rows, and the saved curve prints as a table."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from bench import fewshot_curve as fc
from clinlm.params import load_params
from tests.conftest import ROOT


def _args(**kw) -> argparse.Namespace:
    base = {"rows": ["16", "32", "all"], "seeds": 2, "llm": [], "llm_seeds": 3,
            "llm_seeds_max_rows": 16, "llm_max_rows": None, "n_boot": 50}
    return argparse.Namespace(**{**base, **kw})


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"id": [f"{seed}-{i}" for i in range(n)], "group": [f"{seed}-{i}"
                         for i in range(n)], "statement": "s", "f_x": x,
                         "label": np.where(x + rng.normal(scale=0.5, size=n) > 0, "Yes", "No")})


def test_llm_subsamples_where_rows_are_few_and_none_above_the_cap():
    args = _args(llm_max_rows=32)
    assert [fc.llm_seeds(n, 64, args) for n in (16, 32, 64)] == [3, 1, 0]
    assert fc.llm_seeds(64, 64, _args()) == 1  # all rows: one subsample


def test_a_resumed_curve_computes_only_the_missing_points(tmp_path):
    params = load_params(ROOT / "params.yaml")
    train, test = _table(64, 0), _table(40, 1)
    first = fc.curve("breast_cancer", train, test, params, _args(), tmp_path / "a")
    keys = {fc.point_key(p) for p in first}
    assert keys == {("gbdt", 16, 0), ("gbdt", 16, 1), ("gbdt", 32, 0), ("gbdt", 32, 1),
                    ("gbdt", 64, 0)}
    assert all(p["min_samples_leaf"] <= 40 for p in first)  # scaled down for few rows
    again = fc.curve("breast_cancer", train, test, params, _args(), tmp_path / "b", keys)
    assert again == []  # nothing missing: nothing trained
    more = fc.curve("breast_cancer", train, test, params, _args(seeds=3), tmp_path / "c", keys)
    assert {fc.point_key(p) for p in more} == {("gbdt", 16, 2), ("gbdt", 32, 2)}
    redo = {fc.point_key(p): p["value"] for p in fc.curve(
        "breast_cancer", train, test, params, _args(), tmp_path / "d")}
    assert redo == {fc.point_key(p): p["value"] for p in first}  # seeded: the same numbers

    path = tmp_path / "breast_cancer.json"
    path.write_text(json.dumps({"task": "breast_cancer", "n_test": 40, "n_train_available": 64,
                                "points": first}))
    assert set(fc.read_points(path, 40)) == keys
    with pytest.raises(SystemExit, match="scored on 40 test rows, this call on 39"):
        fc.read_points(path, 39)
    table = fc.summary_markdown(json.loads(path.read_text()))
    assert table.splitlines()[2].startswith("| 16 | ") and "| all | " in table
