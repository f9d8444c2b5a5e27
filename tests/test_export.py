"""``python -m clinlm export``: a trained QLoRA run as a plain HF folder that loads without
peft/bitsandbytes and answers like the adapter path (tiny random Llama, CPU)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clinlm.methods.interface import Run
from tests.conftest import YES_NO_TASK, tiny_sft_cfg, waits_rows

# QLoRA as the presets, LoRA on q/v only: the other 4-bit layers must be dequantized too
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
       "bnb_4bit_compute_dtype": "float32"}


def _run(base, tmp_path, method: str, name: str) -> Run:
    cfg = tiny_sft_cfg(base, epochs=1, bnb=NF4)
    if method == "head":
        cfg = {k: v for k, v in cfg.items() if k != "sft"}
        cfg.update(method="head", torch_threads=None)
        cfg["training"]["learning_rate"] = 0.005
    return Run("noshow", "classification", name, cfg, tmp_path / name, tmp_path, seed=1,
               task_cfg=YES_NO_TASK)


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """One trained 4-bit sft run and one head run (a few seconds each)."""
    from clinlm.methods import get_method
    tmp = tmp_path_factory.mktemp("export")
    runs = {m: _run(tiny_llama, tmp, m, f"tiny-{m}") for m in ("sft", "head")}
    for method, run in runs.items():
        get_method(method).train(run, waits_rows(16))
    return runs


def _plain_files(out):
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}  # no peft files
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        dtypes = {str(f.get_slice(k).get_dtype()) for k in keys}
    assert not [k for k in keys if "lora" in k or "absmax" in k or "quant" in k or "modules_to_save" in k]
    assert dtypes == {"F32"}
    return names, cfg


@pytest.mark.slow  # trains two 4-bit runs (~15 s), then scores
def test_sft_export_loads_plainly_and_answers_like_the_adapter(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinlm.export import export_run
    from clinlm.llm.scorer import first_token_ids
    from clinlm.methods.sft import prompt_texts
    from clinlm.predict import predict_table

    run = trained["sft"]
    before = {p.name: p.read_bytes() for p in run.model_dir.iterdir()}
    out = export_run(run, tmp_path / "merged")
    names, _ = _plain_files(out)
    assert {"generation_config.json", "chat_template.jinja"} <= names
    assert {p.name: p.read_bytes() for p in run.model_dir.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    rows = waits_rows(24).tail(6)
    want = predict_table(run, rows)["p_yes"].to_numpy()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)  # plain: no peft, no bitsandbytes
    assert not any(type(p).__name__ == "Params4bit" for p in model.parameters())
    yes_no = first_token_ids(tok, ["Yes", "No"])
    got = []
    with torch.no_grad():
        for text in prompt_texts(tok, rows["statement"].tolist(), run.task_cfg):
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            got.append(torch.softmax(model(input_ids=ids).logits[0, -1, yes_no], -1)[0].item())
    np.testing.assert_allclose(got, want, atol=1e-5)  # measured: 6e-8
    assert np.ptp(want) > 1e-4  # the rows differ: the comparison means something


@pytest.mark.slow  # trains two 4-bit runs (~15 s), then scores
def test_head_export_loads_as_sequence_classification(trained, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from clinlm.export import export_run
    from clinlm.methods.head import head_texts
    from clinlm.predict import predict_table

    run = trained["head"]
    out = export_run(run, tmp_path / "merged-head")
    names, cfg = _plain_files(out)
    assert "head.json" in names and cfg["id2label"] == {"0": "No", "1": "Yes"}
    rows = waits_rows(24).tail(6)
    want = predict_table(run, rows)["p_yes"].to_numpy()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    got = []
    with torch.no_grad():
        for text in head_texts(rows["statement"].tolist(), run.task_cfg["prompt"]["question"]):
            logits = model(**tok(text, return_tensors="pt")).logits[0]
            got.append(torch.softmax(logits, -1)[1].item())
    np.testing.assert_allclose(got, want, atol=1e-5)  # measured: 6e-8


@pytest.mark.slow  # trains two 4-bit runs (~15 s), then scores
def test_export_is_kept_when_the_adapter_is_unchanged(trained, tmp_path):
    from clinlm.export import export_run
    out = export_run(trained["sft"], tmp_path / "m")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    export_run(trained["sft"], tmp_path / "m")
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_export_refuses_untrained_and_unsupported_runs(tiny_llama, tmp_path):
    from clinlm.export import export_run
    with pytest.raises(FileNotFoundError, match="no trained model.*train_sft"):
        export_run(_run(tiny_llama, tmp_path, "sft", "never-trained"), tmp_path / "o")
    gbdt = Run("noshow", "classification", "gbdt", {"method": "gbdt"}, tmp_path / "g", tmp_path)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.skops").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a LoRA model folder"):
        export_run(gbdt, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---- the chat template fallback (llama2-13b-sft: Llama-2 tokenizers may have none) ----

def _no_template_copy(src, dst):
    """A copy of the tiny model whose (byte-level BPE) tokenizer has no chat template."""
    import shutil
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def _sentencepiece_llama_tokenizer(dst):
    """A tiny Llama-2-style tokenizer (Metaspace "▁" words, <s>/</s>), no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = [r["statement"] + " Will the patient miss it? Yes No [INST] [/INST] <<SYS>> "
              "<</SYS>> Answer or ### Question: Answer:" for _, r in waits_rows(40).iterrows()]
    tk.train_from_iterator(corpus * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_a_tokenizer_without_chat_template_gets_a_working_fallback(tiny_llama, tmp_path, kind):
    from clinlm.llm.scorer import first_token_ids
    from clinlm.llm.tokenizer import LLAMA2_CHAT_TEMPLATE, load_tokenizer
    from clinlm.methods.sft import prompt_texts, tokenize_for_sft

    path = (_no_template_copy(tiny_llama, tmp_path / "m") if kind == "bpe"
            else _sentencepiece_llama_tokenizer(tmp_path / "t"))
    tok = load_tokenizer(path)
    text = prompt_texts(tok, ["Booked 3 days ahead."], YES_NO_TASK)[0]
    if kind == "bpe":
        assert "### Question:\nBooked 3 days ahead." in text and text.endswith("### Answer:\n")
    else:
        assert tok.chat_template == LLAMA2_CHAT_TEMPLATE
        assert text == ("<s>[INST] <<SYS>>\nAnswer Yes or No.\n<</SYS>>\n\n"
                        "Booked 3 days ahead.\nWill the patient miss it? [/INST]")
    rows = waits_rows(8)
    enc = tokenize_for_sft(tok, rows, YES_NO_TASK, "classification")  # prompt is a prefix
    for ids, mask, label in zip(enc["input_ids"], enc["completion_mask"], rows["label"],
                                strict=True):
        answer = [i for i, m in zip(ids, mask, strict=True) if m]
        # the answer's first trained token is the one the scorer reads
        assert answer[0] == first_token_ids(tok, [label])[0]
        assert answer[-1] == tok.eos_token_id


def test_sft_trains_and_predicts_with_the_fallback_template(tiny_llama, tmp_path):
    from clinlm.methods.sft import SFTMethod
    from clinlm.predict import predict_table

    base = _no_template_copy(tiny_llama, tmp_path / "base")
    run = Run("noshow", "classification", "nt", tiny_sft_cfg(base, epochs=1), tmp_path / "nt",
              tmp_path, seed=1, task_cfg=YES_NO_TASK)
    SFTMethod().train(run, waits_rows(8))
    assert "### Answer:" in (tmp_path / "nt" / "chat_template.jinja").read_text()
    assert predict_table(run, waits_rows(4))["p_yes"].between(0, 1).all()
