"""The gbdt baseline: saved without pickle, loaded trusting only what such a model holds."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.base import Run
from clinlm.methods.gbdt import MODEL_FILE, GBDTMethod, load_models


def _table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wait = rng.integers(0, 40, n)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "statement": "x",
                         "f_wait": wait, "f_sex": rng.choice(["F", "M"], n).astype(object),
                         "label": np.where(wait + rng.normal(0, 8, n) > 20, "Yes", "No")})


def test_train_save_reload_predict(tmp_path):
    run = Run("noshow", "classification", "gbdt", {"method": "gbdt"}, tmp_path / "m", tmp_path)
    df = _table()
    GBDTMethod().train(run, df)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["features.json", MODEL_FILE]  # no pickle, no temp file left
    test = _table(40, seed=1)
    test.loc[0, "f_sex"] = "unseen"  # an unseen category is missing, as in training
    p = GBDTMethod().predict(run, test)["p_yes"]
    assert p.between(0, 1).all() and p.notna().all()
    assert p[test["f_wait"] > 30].mean() > p[test["f_wait"] < 10].mean()


def test_a_file_needing_other_types_is_refused(tmp_path):
    import skops.io as sio
    path = tmp_path / MODEL_FILE
    sio.dump({"main": os.system}, path)  # what a tampered model from a shared remote could hold
    with pytest.raises(ValueError, match="refusing to load"):
        load_models(path)


def test_the_same_fit_gives_the_same_bytes(tmp_path):
    """skops names arrays after id() and stamps the zip with the time: dump_models renumbers
    and fixes both, so a retrain with the same seed and data keeps the DVC hash."""
    import time
    digests = []
    for name in ("a", "b"):
        run = Run("noshow", "classification", "gbdt", {"method": "gbdt"}, tmp_path / name,
                  tmp_path)
        GBDTMethod().train(run, _table())
        digests.append((tmp_path / name / MODEL_FILE).read_bytes())
        time.sleep(1.1)
    assert digests[0] == digests[1]
    out = GBDTMethod().predict(run, _table(20, seed=2))
    assert out["p_yes"].between(0, 1).all()
