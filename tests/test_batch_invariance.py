"""A row's answer does not depend on its batch-mates: one row scored alone, in a batch of 3
and in a batch of 32 gives the same answer, for the head and the sft method, in the
pipeline's CPU layout (4-bit NF4 base, ``auto`` precision forced to bf16 through
``CLINLM_PRECISION``: a bf16 residual stream and bf16 autocast, where summation order shows).

Tolerance (:data:`TOL`): answers agree to 1e-4 (probabilities; years for ages), far below
what a clinician reads (0.1 year, 0.01 in a probability)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.interface import Run
from tests.conftest import tiny_sft_cfg

TOL = 1e-4
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
       "bnb_4bit_compute_dtype": "auto"}
TASK = {"prompt": {"target": "vascular age", "system": "You estimate a {target}.",
                   "question": "What is this person's {target} in years?"},
        "answer": {"min": 18, "max": 110}}


def _rows(n: int = 40) -> pd.DataFrame:
    """Statements of different lengths (so batches are padded), ages as labels."""
    rng = np.random.default_rng(0)
    age = rng.integers(25, 85, n)
    text = [f"The patient is {a} years old; systolic pressure {b} mmHg." + " ECG normal." *
            int(k) for a, b, k in zip(age, rng.integers(100, 180, n), rng.integers(0, 8, n),
                                      strict=True)]
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "statement": text,
                         "label": age.astype(float)})


def _cfg(base, method: str) -> dict:
    cfg = tiny_sft_cfg(base, epochs=1, predict_batch_size=32, bnb=NF4)
    cfg["predict"]["autocast_dtype"] = "auto"
    cfg["training"]["bf16"] = "auto"
    cfg.update(attn_implementation="auto", non_quantized_dtype="auto")  # as the presets
    if method == "head":
        cfg = {k: v for k, v in cfg.items() if k != "sft"}
        cfg.update(method="head", head_init="random", non_quantized_dtype="float32")
        cfg["lora"]["task_type"] = "SEQ_CLS"
    return cfg


def _assert_invariant(score, df: pd.DataFrame, column: str) -> None:
    """Rows 0..3: alone, with two batch-mates, with 31 batch-mates -> the same answer."""
    for k in range(4):
        mates = [i for i in range(len(df)) if i != k]
        alone = score(df.iloc[[k]])[column].iloc[0]
        three = score(df.iloc[[mates[0], k, mates[5]]])[column].iloc[1]
        many = score(df.iloc[[*mates[:20], k, *mates[20:31]]])[column].iloc[20]
        assert abs(three - alone) <= TOL and abs(many - alone) <= TOL, (k, alone, three, many)


@pytest.mark.slow  # a 4-bit training and 12 scorings per case (~25 s each on 2 shared cores)
@pytest.mark.parametrize("attn", ["sdpa"])  # eager (the CPU presets) was already exact
@pytest.mark.parametrize("method", ["head", "sft"])
def test_a_row_scores_the_same_alone_and_in_batches(method, attn, tiny_llama, tmp_path,
                                                     monkeypatch):
    from clinlm.methods import get_method
    monkeypatch.setenv("CLINLM_PRECISION", "bfloat16")
    cfg = {**_cfg(tiny_llama, method), "attn_implementation": attn}
    run = Run("vascular_age", "regression", f"tiny-{method}", cfg, tmp_path / "m", tmp_path,
              seed=1, task_cfg=TASK)
    df = _rows()
    get_method(method).train(run, df)
    if method == "head":
        from clinlm.methods.head import HeadMethod
        m = HeadMethod()
        model, tok, meta = m.load_model(run)
        _assert_invariant(lambda d: m.predict_loaded(run, d, model, tok, meta), df, "y_pred")
    else:
        from clinlm.llm.scorer import Scorer
        from clinlm.methods.sft import score_rows
        scorer = Scorer.from_run(run.model_dir, run.cfg)
        assert scorer.autocast_dtype == "bfloat16"
        # the answer distribution itself, not only its (integer) median
        from clinlm.llm.numeric import number_probs
        from clinlm.methods.sft import prompt_texts

        def score(d):
            _, p = number_probs(scorer, prompt_texts(scorer.tok, d["statement"].tolist(),
                                                     run.task_cfg), 18, 110)
            return pd.DataFrame({"p": (p * np.arange(18, 111)).sum(axis=1)})  # the mean age
        _assert_invariant(score, df, "p")
        assert score_rows(scorer, run, df.iloc[:3])["y_pred"].between(18, 110).all()
