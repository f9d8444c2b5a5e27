"""The model card's "Use" code, executed against a released folder (the adapter files and the
merged export under ``merged/``), gives the pipeline's answers for 3 rows to 1e-3: sft and head,
classification, multiclass and regression (one decimal), 4-bit NF4 base (tiny random Llama,
CPU, float32)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.interface import Run
from tests.conftest import RHYTHM_TEXTS, tiny_sft_cfg, waits_rows

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
       "bnb_4bit_compute_dtype": "float32"}
TASKS = {"classification": {"prompt": {"system": "Answer Yes or No.",
                                       "question": "Will the patient miss it?"}},
         "regression": {"prompt": {"target": "vascular age", "system": "Estimate the {target}.",
                                   "question": "What is the {target} in years?"},
                        "answer": {"min": 30, "max": 70, "decimals": 1}},
         "multiclass": {"prompt": {"system": "Name the rhythm.", "question": "Which rhythm?"},
                        "answer": {"labels": RHYTHM_TEXTS}}}


def _ages(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, n).round(1)
    return pd.DataFrame({"id": [str(i) for i in range(n)],
                         "statement": [f"The patient is {a} years old." for a in age],
                         "label": age.astype(float)})


def _rhythms(n: int) -> pd.DataFrame:
    label = np.array(list(RHYTHM_TEXTS))[np.arange(n) % 3]
    return pd.DataFrame({"id": [str(i) for i in range(n)],
                         "statement": [f"Heart rate {70 + 30 * (c == 'AFL')}, rhythm {c}."
                                       for c in label], "label": label})


ROWS = {"classification": waits_rows, "regression": _ages, "multiclass": _rhythms}


def _run(base, tmp_path, method: str, task_type: str) -> Run:
    cfg = tiny_sft_cfg(base, epochs=1, bnb=NF4)
    if method == "head":
        cfg = {k: v for k, v in cfg.items() if k != "sft"}
        cfg.update(method="head", head_init="random")
        cfg["lora"]["task_type"] = "SEQ_CLS"
    name = f"{method}-{task_type}"
    task = {"classification": "noshow", "regression": "vascular_age"}.get(task_type, "rhythm")
    return Run(task, task_type, name, cfg, tmp_path / name, tmp_path, seed=1,
               task_cfg=TASKS[task_type])


@pytest.mark.slow  # six 4-bit trainings, exports and adapter loads (~90 s on 2 cores)
@pytest.mark.parametrize("method,task_type", [("sft", "classification"), ("sft", "regression"),
                                              ("sft", "multiclass"),
                                              ("head", "classification"),
                                              ("head", "regression"), ("head", "multiclass")])
def test_the_card_code_reproduces_the_pipeline(method, task_type, tiny_llama, tmp_path):
    from clinlm.cardsnippet import run_snippet, use_snippet
    from clinlm.export import export_run
    from clinlm.methods import get_method
    from clinlm.predict import predict_table

    run = _run(tiny_llama, tmp_path, method, task_type)
    get_method(method).train(run, ROWS[task_type](16))
    rows = ROWS[task_type](24).tail(3)
    pred = predict_table(run, rows)
    want = (pred[[f"p_{c}" for c in RHYTHM_TEXTS]] if task_type == "multiclass" else
            pred["p_yes" if task_type == "classification" else "y_pred"])
    repo = tmp_path / "released"
    shutil.copytree(run.model_dir, repo)
    export_run(run, repo / "merged")
    for merged in (True, False):
        code = "\n".join(use_snippet(run, "me/model", merged))
        answer = run_snippet(code, str(repo))
        got = [answer(s) for s in rows["statement"]]
        if task_type == "multiclass":  # {label: p} per row, in the run's class order
            assert all(list(g) == list(RHYTHM_TEXTS) for g in got)
            got = [list(g.values()) for g in got]
        np.testing.assert_allclose(got, want.to_numpy(float), atol=1e-3,
                                   err_msg=f"merged={merged}\n{code}")
