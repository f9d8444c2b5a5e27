"""Cohere open weights through the existing QLoRA sft path (issue: Cohere part 2).

A tiny Cohere-architecture model (``CohereForCausalLM``, random weights, CPU) with a tokenizer
carrying Command-R / Aya's chat template and turn tokens trains and predicts through
``method: sft`` exactly like the default model: the chat JSONL format feeds it unchanged.
"""

import numpy as np
import pandas as pd
import pytest

from clinlm.methods.interface import Run
from clinlm.methods.sft import SFTMethod, tokenize_for_sft
from clinlm.params import load_params
from clinlm.predict import predict_table
from tests.conftest import ROOT, tiny_sft_cfg

# Command-R / Aya chat template (turn tokens as in CohereLabs' tokenizer_config.json).
COHERE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if m['role'] == 'system' %}<|SYSTEM_TOKEN|>{% elif m['role'] == 'user' %}<|USER_TOKEN|>"
    "{% else %}<|CHATBOT_TOKEN|>{% endif %}{{ m['content'] }}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}")
TURN_TOKENS = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>",
               "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<BOS_TOKEN>"]
TASK = {"prompt": {"system": "Answer Yes or No.", "question": "Will the patient miss it?"}}


@pytest.fixture(scope="module")
def tiny_cohere(tiny_llama, tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, CohereConfig, CohereForCausalLM

    out = tmp_path_factory.mktemp("tiny_cohere")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.add_special_tokens({"additional_special_tokens": TURN_TOKENS})
    tok.bos_token, tok.eos_token, tok.pad_token = "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"
    tok.chat_template = COHERE_TEMPLATE
    torch.manual_seed(0)
    cfg = CohereConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    CohereForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _df(n):
    wait = np.random.default_rng(1).integers(0, 40, n)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "group": [str(i) for i in range(n)],
                         "statement": [f"Booked {w} days ahead." for w in wait],
                         "label": np.where(wait > 20, "Yes", "No")})


def test_cohere_template_answer_ends_with_end_of_turn(tiny_cohere):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_cohere)
    enc = tokenize_for_sft(tok, _df(3), TASK, "classification")
    ids, mask = enc["input_ids"][0], enc["completion_mask"][0]
    answer = [i for i, m in zip(ids, mask, strict=True) if m]
    assert answer[-1] == tok.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>")
    assert "<|CHATBOT_TOKEN|>" in tok.decode(ids[: len(ids) - len(answer)])


def test_cohere_architecture_trains_and_predicts(tiny_cohere, tmp_path):
    cfg = tiny_sft_cfg(tiny_cohere)
    run = Run("noshow", "classification", "tiny-cohere", cfg, tmp_path / "m", tmp_path, seed=1,
              task_cfg=TASK)
    info = SFTMethod().train(run, _df(32))
    assert info["last_loss"] < info["first_loss"]
    res = predict_table(run, _df(6))
    assert res["p_yes"].between(0, 1).all() and len(res) == 6


def test_aya_gpu_preset_in_params():
    m = load_params(ROOT / "params.yaml")["models"]["aya-expanse-8b-sft"]
    assert m["method"] == "sft" and m["base"] == "data/models/base/aya-expanse-8b"
    assert m["bnb"]["load_in_4bit"] and m["bnb"]["bnb_4bit_compute_dtype"] == "bfloat16"
