"""Numeric decoding (clinlm.numeric): exact digit-by-digit answer distributions (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clinlm.llm.numeric import decode_numeric, digit_token_ids, number_probs, summarize
from tests.conftest import tiny_sft_cfg

# One intra-op thread: these tiny models are all per-op overhead, and on a busy 2-core box
# two OpenMP threads make every small op ~100x slower.
THREADS = 1
PROMPTS = ["short", "a much longer prompt with many more tokens in it than the first one", "mid one"]


def test_summarize_known_distribution() -> None:
    values = np.array([10, 20, 30, 40, 50])
    probs = np.array([[0.1, 0.2, 0.4, 0.2, 0.1],      # symmetric: median = mean = 30
                      [0.5, 0.5, 0.0, 0.0, 0.0],      # exact 0.5 split -> lower median
                      [0.02, 0.03, 0.05, 0.1, 0.8],   # skewed
                      [0.0, 0.0, 0.0, 0.0, 2.0]])     # unnormalised point mass
    s = summarize(values, probs)
    np.testing.assert_allclose(s["median"], [30, 10, 50, 50])
    np.testing.assert_allclose(s["mean"], [30, 15, 0.2 + 0.6 + 1.5 + 4 + 40, 50])
    # 5 % / 95 % quantiles = smallest value whose CDF reaches the level
    np.testing.assert_allclose(s["lo"], [10, 10, 20, 50])  # row 3: CDF(10) = 0.02 < 0.05 = CDF(20)
    np.testing.assert_allclose(s["hi"], [50, 20, 50, 50])
    np.testing.assert_allclose(s["mode"], [30, 10, 50, 50])
    np.testing.assert_allclose(s["p_max"], [0.4, 0.5, 0.8, 1.0])
    with pytest.raises(ValueError):
        summarize(values, -probs)
    with pytest.raises(ValueError):
        summarize(values[::-1], probs)


def test_summarize_quantile_boundaries() -> None:
    values = np.arange(1, 21)
    s = summarize(values, np.full((1, 20), 0.05))  # uniform on 1..20: CDF(k) = k / 20
    assert s["lo"][0] == 1 and s["median"][0] == 10 and s["hi"][0] == 19
    assert s["mean"][0] == pytest.approx(10.5)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scorer(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinlm.llm.scorer import Scorer as AnswerScorer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    return AnswerScorer(model, tok, batch_size=2, autocast_dtype=None)


def test_digits_are_single_tokens(scorer) -> None:
    ids = digit_token_ids(scorer.tok)
    assert scorer.tok("67", add_special_tokens=False)["input_ids"] == [ids["6"], ids["7"]]

    class Merging:  # a tokenizer that spells "7" as two tokens
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2] if text == "7" else [ord(text)]}
    with pytest.raises(ValueError, match="'7' is 2 tokens"):
        digit_token_ids(Merging())


def test_decode_outputs_in_range(scorer) -> None:
    values, probs = number_probs(scorer, PROMPTS, 18, 110)
    assert values[0] == 18 and values[-1] == 110 and probs.shape == (3, 93)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs >= 0).all()
    out = decode_numeric(scorer, PROMPTS, 18, 110)
    assert set(out) >= {"y_pred", "y_lo", "y_hi", "p_max"}
    for key in ("y_pred", "y_lo", "y_hi"):
        assert out[key].shape == (3,) and ((out[key] >= 18) & (out[key] <= 110)).all()
    assert (out["y_lo"] <= out["y_pred"]).all() and (out["y_pred"] <= out["y_hi"]).all()
    mse = decode_numeric(scorer, PROMPTS, 18, 110, loss="mse")
    np.testing.assert_allclose(mse["y_pred"], probs @ values, rtol=1e-9)
    with pytest.raises(ValueError):
        decode_numeric(scorer, PROMPTS, 18, 110, loss="huber")


@pytest.fixture(scope="module")
def eager_scorer(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinlm.llm.scorer import Scorer as AnswerScorer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32,
                                                 attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    return AnswerScorer(model, tok, batch_size=3, autocast_dtype=None)


def test_strategies_batching_and_attention_agree(scorer, eager_scorer) -> None:
    """Tree attention (sdpa bool mask / eager additive mask), per-level KV copies, batch sizes."""
    from clinlm.llm.scorer import Scorer as AnswerScorer
    _, tree = number_probs(scorer, PROMPTS, 7, 123, strategy="tree")
    _, levels = number_probs(scorer, PROMPTS, 7, 123, strategy="levels", chunk_size=1)
    single = AnswerScorer(scorer.model, scorer.tok, batch_size=1, autocast_dtype=None)
    _, levels1 = number_probs(single, PROMPTS, 7, 123, strategy="levels", chunk_size=500)
    _, tree1 = number_probs(single, PROMPTS, 7, 123, strategy="tree")
    _, eager = number_probs(eager_scorer, PROMPTS, 7, 123)  # auto -> tree, additive mask
    for other in (levels, levels1, tree1, eager):
        np.testing.assert_allclose(other, tree, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="strategy"):
        number_probs(scorer, PROMPTS, 7, 123, strategy="beam")


@pytest.mark.parametrize("strategy", ["tree", "levels"])
def test_enumeration_is_exact_against_full_forward(scorer, strategy) -> None:
    """P(number) = prod of full-model next-token probabilities (renormalised over the
    digits + end-of-turn at each step), renormalised over lo..hi: 1-, 2- and 3-digit answers."""
    import torch
    lo, hi = 7, 123
    tok, model = scorer.tok, scorer.model
    ids = digit_token_ids(tok)
    alphabet = [ids[d] for d in "0123456789"] + [tok.eos_token_id]
    values, probs = number_probs(scorer, PROMPTS, lo, hi, strategy=strategy)
    for row in (0, 1):  # a short and the longest (padded in the batch) prompt
        base = tok(PROMPTS[row], add_special_tokens=False)["input_ids"]
        memo: dict[str, np.ndarray] = {}

        def step(prefix: str, base=base, memo=memo) -> np.ndarray:
            if prefix not in memo:
                x = torch.tensor([base + [ids[c] for c in prefix]])
                with torch.no_grad():
                    p = torch.softmax(model(input_ids=x).logits[0, -1].double(), -1)  # full vocab
                q = p[alphabet].numpy()
                memo[prefix] = q / q.sum()
            return memo[prefix]

        def unnormalised(s: str, step=step) -> float:
            return float(np.prod([step(s[:k])[int(c)] for k, c in enumerate(s)]) * step(s)[10])

        ref = np.array([unnormalised(s) for s in map(str, values)])
        np.testing.assert_allclose(probs[row], ref / ref.sum(), rtol=2e-4, atol=1e-10)
        j = int(np.flatnonzero(values == 67)[0])  # one number spelled out by hand
        p67 = step("")[6] * step("6")[7] * step("67")[10]
        assert probs[row, j] == pytest.approx(p67 / ref.sum(), rel=2e-4)
        assert probs[row, 0] == pytest.approx(step("")[7] * step("7")[10] / ref.sum(), rel=2e-4)


def test_sft_regression_train_and_predict(tiny_llama, tmp_path) -> None:
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import SFTMethod
    from clinlm.predict import predict_table

    rng = np.random.default_rng(0)
    ages = rng.integers(20, 90, 24)
    df = pd.DataFrame({"id": [str(i) for i in range(24)], "group": [str(i) for i in range(24)],
                       "statement": [f"Age {a}." for a in ages], "label": ages.astype(float)})
    task = {"prompt": {"system": "Answer with a number.", "question": "What is the age?"},
            "answer": {"min": 18, "max": 110}}
    cfg = tiny_sft_cfg(tiny_llama, torch_threads=THREADS)
    run = Run("vascular_age", "regression", "tiny", cfg, tmp_path / "m", tmp_path, seed=1,
              task_cfg=task)
    info = SFTMethod().train(run, df)
    assert info["answer_tokens"] == 24 * 3  # two digit tokens + end-of-turn per row
    test = df.iloc[:6].reset_index(drop=True)
    out = SFTMethod().predict(run, test)
    assert {"id", "y_pred", "y_lo", "y_hi"} <= set(out.columns)
    assert out["id"].tolist() == test["id"].tolist()
    assert out["y_pred"].between(18, 110).all()
    assert (out["y_lo"] <= out["y_pred"]).all() and (out["y_pred"] <= out["y_hi"]).all()
    res = predict_table(run, test)
    assert list(res.columns) == ["id", "y_true", "y_pred", "y_lo", "y_hi"]


def test_the_interval_holds_the_mean_of_a_skewed_distribution(monkeypatch) -> None:
    """96 % at 18, 4 % at 110: the mean (21.7) lies above the 95th percentile (18); the
    interval is widened to hold it, so no answer is printed outside its own interval."""
    import clinlm.llm.numeric as num
    values = np.arange(18, 111)
    p = np.zeros((2, len(values)))
    p[0, 0], p[0, -1] = 0.96, 0.04
    p[1, 40] = 1.0
    monkeypatch.setattr(num, "number_probs", lambda *a, **k: (values, p))
    for loss in ("mae", "mse"):
        est = num.decode_numeric(None, ["a", "b"], 18, 110, loss=loss)
        assert (est["y_lo"] <= est["y_pred"]).all() and (est["y_pred"] <= est["y_hi"]).all()
    assert est["y_pred"][0] == pytest.approx(0.96 * 18 + 0.04 * 110) and est["y_hi"][0] > 18


def test_grid_spells_every_answer_as_training_writes_it() -> None:
    from clinlm.llm.numeric import grid
    from clinlm.prompts import format_answer
    values, texts = grid(-1, 1, 1)
    assert texts[:3] == ["-1.0", "-0.9", "-0.8"] and texts[10] == "0.0" and texts[-1] == "1.0"
    np.testing.assert_allclose(values, np.round(np.arange(-10, 11) / 10, 1))
    assert all(format_answer(v, "regression", decimals=1) == t for v, t in zip(values, texts,
                                                                               strict=True))
    assert format_answer(-0.04, "regression", decimals=1) == "0.0"  # never "-0.0"
    assert grid(18, 110)[1][:2] == ["18", "19"]
    with pytest.raises(ValueError, match="not on a grid of 1 decimal"):
        grid(4.05, 5, 1)


@pytest.mark.parametrize("strategy", ["tree", "levels"])
def test_decimals_and_negative_answers_are_exact(scorer, strategy) -> None:
    """[-1.5, 2.0] by 0.1: the sign and the decimal point are answer characters like the
    digits; each answer's probability is the product of the model's next-token probabilities
    over the alphabet (digits, '.', '-', end), renormalised over the grid."""
    import torch
    tok, model = scorer.tok, scorer.model
    ids = digit_token_ids(tok, "0123456789.-")
    chars = "0123456789.-"
    alphabet = [ids[c] for c in chars] + [tok.eos_token_id]
    values, probs = number_probs(scorer, PROMPTS, -1.5, 2.0, strategy=strategy, decimals=1)
    assert len(values) == 36 and values[0] == pytest.approx(-1.5)
    base = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]

    def step(prefix: str) -> np.ndarray:
        x = torch.tensor([base + [ids[c] for c in prefix]])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=x).logits[0, -1].double(), -1)
        q = p[alphabet].numpy()
        return q / q.sum()

    texts = [f"{v:.1f}".replace("-0.0", "0.0") for v in values]
    ref = np.array([np.prod([step(t[:k])[chars.index(c)] for k, c in enumerate(t)])
                    * step(t)[-1] for t in texts])
    np.testing.assert_allclose(probs[1], ref / ref.sum(), rtol=2e-4, atol=1e-10)
    est = decode_numeric(scorer, PROMPTS, -1.5, 2.0, decimals=1)
    assert np.isin(np.round(est["y_pred"], 1), np.round(values, 1)).all()
