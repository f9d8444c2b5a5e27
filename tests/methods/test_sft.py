"""The sft method on a tiny random Llama with the real SmolLM2 tokenizer (fast, CPU)."""

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.interface import Run
from clinlm.methods.sft import SFTMethod, tokenize_for_sft
from clinlm.predict import predict_table
from tests.conftest import YES_NO_TASK, tiny_sft_cfg, waits_rows

TASK = YES_NO_TASK



def _df(n: int = 48) -> pd.DataFrame:
    return waits_rows(n)


def _cfg(base, **over):
    return tiny_sft_cfg(base, epochs=3, predict_batch_size=5, **over)


def test_tokenize_masks_only_the_answer(tiny_llama):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    enc = tokenize_for_sft(tok, _df(4), TASK, "classification")
    for ids, mask, label in zip(enc["input_ids"], enc["completion_mask"], _df(4)["label"], strict=True):
        answer = [i for i, m in zip(ids, mask, strict=True) if m]
        assert tok.decode(answer).startswith(label)
        assert answer[-1] == tok.eos_token_id  # learns to stop
        assert sum(mask) <= 3


def test_train_lowers_loss_and_predicts(tiny_llama, tmp_path):
    run = Run("noshow", "classification", "tiny", _cfg(tiny_llama), tmp_path / "m", tmp_path,
              seed=1, task_cfg=TASK)
    info = SFTMethod().train(run, _df())
    assert info["last_loss"] < info["first_loss"]
    assert (tmp_path / "m" / "adapter_model.safetensors").exists()
    df = _df(12)
    res = predict_table(run, df)
    assert list(res.columns) == ["id", "y_true", "p_yes", "y_pred"]
    assert res["p_yes"].between(0, 1).all() and res["id"].tolist() == df["id"].tolist()


def test_batched_scoring_equals_one_by_one(tiny_llama, tmp_path):
    """Left padding + position ids: a row scores the same alone or in a padded batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinlm.llm.scorer import Scorer as AnswerScorer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    prompts = ["short", "a much longer prompt with many more tokens in it than the first", "mid one"]
    batched = AnswerScorer(model, tok, batch_size=3, autocast_dtype=None).choice_probs(prompts, ["Yes", "No"])
    single = AnswerScorer(model, tok, batch_size=1, autocast_dtype=None).choice_probs(prompts, ["Yes", "No"])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # and equals the full model's softmax over the two tokens at the last position
    ids = [tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"] for p in prompts]
    yes, no = tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]
    for i, x in enumerate(ids):
        logits = model(input_ids=x).logits[0, -1, [yes, no]]
        np.testing.assert_allclose(torch.softmax(logits, -1).detach().numpy(), batched[i], atol=1e-5)


@pytest.mark.parametrize("bnb", [{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                  "bnb_4bit_use_double_quant": True,
                                  "bnb_4bit_compute_dtype": "float32"}])
def test_qlora_4bit_path_on_cpu(tiny_llama, tmp_path, bnb):
    cfg = _cfg(tiny_llama, bnb=bnb)
    cfg["training"]["num_train_epochs"] = 1
    run = Run("noshow", "classification", "tiny4", cfg, tmp_path / "m4", tmp_path, seed=1,
              task_cfg=TASK)
    info = SFTMethod().train(run, _df(16))
    assert info["trainable_parameters"] > 0
    res = predict_table(run, _df(6))
    assert res["p_yes"].notna().all()


def test_merged_dequantized_adapter_matches_4bit_plus_lora(tiny_llama):
    """Prediction folds LoRA into dequantized layers: same logits as NF4 base + adapter."""
    import torch
    from peft import get_peft_model

    from clinlm.llm.builders import build_lora_config
    from clinlm.llm.load import load_model, merge_lora_dequantized

    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
           "bnb_4bit_compute_dtype": "float32"}
    torch.manual_seed(0)
    model = get_peft_model(load_model({"base": str(tiny_llama), "bnb": bnb, "dtype": "float32"},
                                      "causal"),
                           build_lora_config({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM",
                                                 "target_modules": ["q_proj", "v_proj", "down_proj"]}))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter do something
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(3, 200, (3, 17))
    with torch.no_grad():  # train mode (no dropout here): bnb's exact dequantize + fp32 path
        want = model(input_ids=x).logits
    model.eval()
    with torch.inference_mode():
        # an eval forward first: on AVX512-BF16 CPUs bnb then repacks the 4-bit weights in
        # place for its bf16 kernel, and the merge must still read the right weights
        model(input_ids=x)
        merged = merge_lora_dequantized(model)
        got = merged(input_ids=x).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.model.layers[0].self_attn.q_proj.__class__ is torch.nn.Linear
    # bnb's own CPU 4-bit kernels round to bf16 on AVX512-BF16 machines (0.2 % measured on
    # an EPYC Zen 5; 1e-5 on AVX2): the merged fp32 layers are the exact dequantized weights
    assert (want - got).abs().max() < 5e-3 * want.abs().max()


def test_prefix_cache_scores_like_full_prompts(tiny_llama):
    """The shared system prompt runs once (KV cache reused); every row scores the same as
    without the cache, alone or in padded batches, and the prefix is found in tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinlm.llm.scorer import Scorer as AnswerScorer
    from clinlm.llm.scorer import shared_prefix_length
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    system = "You predict whether a patient will miss a medical appointment. Answer Yes or No.\n"
    prompts = [system + s for s in ["short", "a much longer row with many more tokens than the first",
                                    "mid one", "x"]]
    enc = tok(prompts, add_special_tokens=False)["input_ids"]
    n = shared_prefix_length(enc)
    assert n >= 8 and all(e[:n] == enc[0][:n] for e in enc) and n < min(map(len, enc))
    assert shared_prefix_length([[1, 2, 3], [4, 5]]) == 0
    want = AnswerScorer(model, tok, batch_size=1, autocast_dtype=None,
                        prefix_cache=False).last_hidden(prompts)
    for bs in (1, 3):
        got = AnswerScorer(model, tok, batch_size=bs, autocast_dtype=None).last_hidden(prompts)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_dvclive_without_log_dir_reports_nothing(tmp_path, monkeypatch):
    """Scratch trainings (benchmark, learning curve) must not fall back to ./dvclive."""
    from clinlm.llm.builders import training_callbacks

    monkeypatch.chdir(tmp_path)
    kw = {"report_to": "dvclive"}
    assert training_callbacks(kw, None) == [] and kw["report_to"] == "none"
    kw = {"report_to": ["dvclive", "wandb"]}
    assert training_callbacks(kw, None) == [] and kw["report_to"] == ["wandb"]
    kw = {"report_to": "dvclive"}
    (cb,) = training_callbacks(kw, str(tmp_path / "curves"))
    from transformers.integrations import DVCLiveCallback
    assert kw["report_to"] == "none" and isinstance(cb, DVCLiveCallback)
    assert not (tmp_path / "dvclive").exists()
    # the committed curves carry no wall-clock figures (a rerun must not change them)
    from transformers import TrainerControl, TrainerState, TrainingArguments
    state = TrainerState()
    state.is_world_process_zero, state.global_step = True, 1
    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True)
    cb.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "train_runtime": 3.2,
                                                   "train_samples_per_second": 9.0})
    cb.live.next_step()
    names = {p.stem for p in (tmp_path / "curves").rglob("*.tsv")}
    assert "loss" in names and not names & {"runtime", "samples_per_second"}
