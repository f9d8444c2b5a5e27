"""The "Use" code of a model card: a complete, runnable snippet that gives the pipeline's answer.

Why a module of its own: the snippet is code that ``tests/test_card_snippet.py`` executes
against a released folder and compares with ``clinlm predict`` (3 rows, 1e-3), so it must read
the model the way the pipeline does -- the chat prompt of :mod:`clinlm.prompts` (``{target}``
substituted), P(Yes) renormalised over the first tokens of Yes/No, ages digit by digit
renormalised over the answer alphabet (:mod:`clinlm.llm.numeric`), the head's target scaler
from ``head.json``, answers bounded by the task's range -- and load the weights the pipeline
scores with: the merged folder when released, else the adapter on the base quantized with the
run's own ``BitsAndBytesConfig`` (an unquantised base is another model: p_yes 0.10-0.13 where
the pipeline gave 0.16-0.19).
"""

from __future__ import annotations

from typing import Any

from clinlm.methods.base import CLASSIFICATION, Run
from clinlm.prompts import prompt_text

_REPO_FILE = '''def repo_path(name=""):  # a file or folder of the repo: local folder, or from the Hub
    if os.path.isdir(REPO):
        return os.path.join(REPO, name)
    from huggingface_hub import snapshot_download
    return os.path.join(snapshot_download(REPO), name)
'''

_SFT_PROMPT = '''def prompt(statement):  # the chat prompt the model was trained on
    messages = ([] if SYSTEM is None else [{"role": "system", "content": SYSTEM}])
    messages.append({"role": "user", "content": statement + "\\n" + QUESTION})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
'''

_SFT_YES = '''def answer(statement):  # P(Yes): next token after the prompt, renormalised over Yes/No
    ids = tok(prompt(statement), add_special_tokens=False, return_tensors="pt")["input_ids"]
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, [yes, no]].double()
    return torch.softmax(logits, 0)[0].item()
'''

_SFT_AGE = '''def answer(statement):  # the median of P(age), age in [LO, HI], digit by digit
    ids = tok(prompt(statement), add_special_tokens=False)["input_ids"]
    digits = [tok(d, add_special_tokens=False)["input_ids"][0] for d in "0123456789"]
    alphabet = digits + [tok.eos_token_id]  # each step renormalised over digits + end
    values = list(range(LO, HI + 1))
    logp = {}
    for width in sorted({len(str(v)) for v in values}):
        group = [v for v in values if len(str(v)) == width]
        seqs = torch.tensor([ids + [digits[int(c)] for c in str(v)] for v in group])
        with torch.no_grad():
            steps = model(input_ids=seqs).logits[:, len(ids) - 1:, alphabet].double()
        lp = torch.log_softmax(steps, -1)
        for row, v in enumerate(group):
            s = str(v)
            logp[v] = sum(lp[row, k, int(c)].item() for k, c in enumerate(s)) + lp[row, len(s), 10].item()
    p = torch.softmax(torch.tensor([logp[v] for v in values], dtype=torch.float64), 0)
    return float(values[int((torch.cumsum(p, 0) < 0.5 - 1e-9).sum())])
'''

_HEAD = '''head = json.load(open(repo_path("head.json")))  # question, target scaler, max_length
tok.truncation_side = "left"  # long statements lose their beginning, as in training


def answer(statement):  # {what}
    text = statement + "\\n" + head["question"] if head["question"] else statement
    enc = tok(text, truncation=True, max_length=head["max_length"], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).logits[0].double()
{tail}'''
_HEAD_YES = '''    return torch.softmax(out, 0)[head["labels"]["Yes"]].item()
'''
_HEAD_AGE = '''    y = out[0].item() * head["scaler"]["std"] + head["scaler"]["mean"]
    return min(max(y, LO), HI)  # the task's answer range, as the pipeline bounds it
'''


def use_snippet(run: Run, repo_id: str, merged: bool) -> list[str]:
    """The lines of the card's Python block (see module docstring)."""
    method, cls = run.cfg["method"], run.task_type == CLASSIFICATION
    ans = run.task_cfg["answer"]
    auto = "AutoModelForCausalLM" if method == "sft" else "AutoModelForSequenceClassification"
    lines = ["import json", "import os", "", "import torch",
             f"from transformers import AutoTokenizer, {auto}"]
    bnb = run.cfg.get("bnb") or {}
    quantized = bool(bnb.get("load_in_4bit") or bnb.get("load_in_8bit"))
    if not merged:
        lines.append("from peft import PeftModel")
        if quantized:
            lines.append("from transformers import BitsAndBytesConfig")
    lines += ["", f"REPO = {repo_id!r}  # or the local folder it was downloaded to",
              f"LO, HI = {int(ans['min'])}, {int(ans['max'])}", "", _REPO_FILE]
    if merged:
        lines += ["# the merged weights the pipeline scores with (no peft, no bitsandbytes)",
                  'tok = AutoTokenizer.from_pretrained(repo_path("merged"))',
                  f'model = {auto}.from_pretrained(repo_path("merged"), '
                  'dtype=torch.float32).eval()']
    else:
        kw = [] if method == "sft" else [f"num_labels={2 if cls else 1}"]
        lines += ["# the base the adapter was trained on, from adapter_config.json",
                  'BASE = json.load(open(repo_path("adapter_config.json")))'
                  '["base_model_name_or_path"]']
        if quantized:  # the adapter was trained on this 4-bit base: load it the same way
            from clinlm.llm.precision import resolve_cfg  # `auto`: the dtype trained with
            q = {k: v for k, v in resolve_cfg(run.cfg)["bnb"].items() if v is not None}
            lines += [f"BNB = {q!r}"]
            kw.append("quantization_config=BitsAndBytesConfig(**BNB)")
        kw.append("dtype=torch.float32")
        lines += ["tok = AutoTokenizer.from_pretrained(repo_path())",
                  f"base = {auto}.from_pretrained(BASE, {', '.join(kw)})"]
        if quantized:
            lines.append("base = base.dequantize()  # its 4-bit weights, as the pipeline "
                         "scores them (an unquantised base is another model)")
        lines.append("model = PeftModel.from_pretrained(base, repo_path()).merge_and_unload()"
                     ".eval()")
        if method == "head":
            lines.append("model.config.pad_token_id = tok.pad_token_id")
    lines.append("")
    if method == "sft":
        lines += [f"SYSTEM = {prompt_text(run.task_cfg, 'system')!r}",
                  f"QUESTION = {prompt_text(run.task_cfg, 'question')!r}", "", "",
                  _SFT_PROMPT, "", _SFT_YES if cls else _SFT_AGE]
    else:
        lines += ["", _HEAD.format(what="P(Yes)" if cls else "the age in years",
                                   tail=_HEAD_YES if cls else _HEAD_AGE)]
    lines += ["", 'print(answer("<one statement, written as in the training data>"))']
    return "\n".join(lines).split("\n")


def run_snippet(code: str, repo: str) -> Any:
    """Execute a card's snippet with ``REPO`` pointing at ``repo``; returns its ``answer``
    (for tests: the card's code, not a copy of it)."""
    code = code.replace('print(answer("<one statement, written as in the training data>"))', "")
    env: dict[str, Any] = {}
    lines = [f"REPO = {repo!r}" if ln.startswith("REPO = ") else ln for ln in code.split("\n")]
    exec(compile("\n".join(lines), "<model card>", "exec"), env)  # noqa: S102 - our own card
    return env["answer"]
