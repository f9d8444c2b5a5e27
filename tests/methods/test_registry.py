"""One home per method's capabilities (issue 29): a new method is its module, one registry
line and its dvc.yaml stage group. A toy method written here -- a constant predictor that may
be a stack's baseline -- goes through params validation, make_run, train, predict, ask's
loaded-once predictor, the stack's member rules, export and the model card without any other
list in the project knowing its name."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from clinlm import methods
from clinlm.params import ParamsError, load_params, validate
from tests.conftest import ROOT, waits_rows

TOY = textwrap.dedent('''
    """A toy method: the training split's share of Yes, for every row."""
    import json
    from typing import Literal

    import pandas as pd

    from clinlm.config import ModelCommon
    from clinlm.methods.interface import CLASSIFICATION, Method


    class ToyModelConfig(ModelCommon):
        method: Literal["toy"]
        shrink: float = 1.0   # the share of Yes is multiplied by this


    class ToyMethod(Method):
        name = "toy"
        config = ToyModelConfig
        task_types = (CLASSIFICATION,)
        stack_role = "baseline"

        def train(self, run, train_df):
            p = float(train_df["label"].eq("Yes").mean()) * run.cfg["shrink"]
            run.model_dir.mkdir(parents=True, exist_ok=True)
            (run.model_dir / "toy.json").write_text(json.dumps({"p": p}))
            return {"n_train": len(train_df)}

        def predict(self, run, df):
            p = json.loads((run.model_dir / "toy.json").read_text())["p"]
            return pd.DataFrame({"id": df["id"].to_numpy(), "p_yes": p})

        def answer_reading(self, run):
            return "The training split's share of Yes, whatever the row says."
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module on sys.path and its one registry line."""
    (tmp_path / "toymethod.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(methods.REGISTRY, "toy", "toymethod:ToyMethod")
    yield
    sys.modules.pop("toymethod", None)


def _params(**run):
    params = load_params(ROOT / "params.yaml")
    params["models"]["toy"] = {"method": "toy", "shrink": 0.5}
    params["runs"]["toy"] = {"noshow-toy": {"task": "noshow", "model": "toy", **run}}
    return params


def test_a_new_method_is_its_module_and_one_registry_line(toy, tmp_path, monkeypatch):
    from clinlm.ask import refusal
    from clinlm.export import export_kind
    from clinlm.methods import load_once
    from clinlm.modelcard import decoding
    from clinlm.predict import predict_table
    from clinlm.runs import make_run

    params = _params()
    validate(params, library_models=[])  # its section checked by its own config class
    bad = _params()
    bad["models"]["toy"]["shrnk"] = 1
    with pytest.raises(ParamsError, match=r"models\.toy.*shrnk"):
        validate(bad, library_models=[])
    wrong_task = _params()
    wrong_task["runs"]["toy"]["noshow-toy"]["task"] = "vascular_age"
    with pytest.raises(ParamsError, match=r"runs\.toy\.noshow-toy: the toy method answers "
                                          r"classification; task 'vascular_age' is regression"):
        validate(wrong_task, library_models=[])

    monkeypatch.chdir(tmp_path)
    run = make_run("noshow-toy", params)
    assert run.cfg == {"method": "toy", "description": "", "shrink": 0.5}
    train = waits_rows(20)
    methods.get_method("toy").train(run, train)
    pred = predict_table(run, waits_rows(6))
    assert np.allclose(pred["p_yes"], 0.5 * train["label"].eq("Yes").mean())
    assert refusal("toy") is None  # ask/serve answer it, loaded once
    assert load_once(run) is load_once(run)
    with pytest.raises(ValueError, match=r"method 'toy' has no merged export \(exportable: "
                                         r"sft, head\)"):
        export_kind(run)
    assert decoding(run).startswith("The training split's share of Yes")


def test_a_stack_takes_the_new_method_by_its_declared_role(toy):
    from clinlm.methods.stack import resolve_members
    from clinlm.runs import make_run

    params = _params()
    params["runs"]["stack"]["noshow-stack"]["baseline"] = "toy"
    run = make_run("noshow-stack", params)  # the stack binds its members from params
    assert run.members["baseline"][0] == "noshow-toy"
    params["runs"]["stack"]["noshow-stack"]["llm"] = "toy"
    with pytest.raises(ValueError, match=r"llm: noshow-toy is method 'toy'; a stack's llm must "
                                         r"be one of \('sft', 'head'\)"):
        resolve_members(run, params)


def test_the_third_place_is_its_dvc_stage_group(toy):
    """dvc.yaml needs train_toy / predict_toy / evaluate_toy: the check names them."""
    from tests.test_dvc_deps import test_every_method_has_its_stage_group
    with pytest.raises(KeyError, match="train_toy"):
        test_every_method_has_its_stage_group()


def test_every_registered_method_declares_a_config_and_a_name():
    for name in methods.method_names():
        cls = methods.method_class(name)
        assert cls.name == name and cls.config.model_fields["method"].annotation.__args__ == (
            name,)
        if cls.exportable:
            assert cls.llm, name
        assert cls.stack_role in (None, "llm", "baseline")
    assert pd.Series([methods.method_class(m).llm for m in methods.method_names()]).sum() == 3
