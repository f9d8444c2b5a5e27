"""The "Use" code of a model card: a complete, runnable snippet that gives the pipeline's answer.

Why a module of its own: the snippet is code that ``tests/test_card_snippet.py`` executes
against a released folder and compares with ``clinlm predict`` (3 rows, 1e-3), so it must read
the model the way the pipeline does -- the chat prompt of :mod:`clinlm.prompts` (``{target}``
substituted), P(Yes) renormalised over the first tokens of Yes/No, ages digit by digit
renormalised over the answer alphabet (:mod:`clinlm.llm.numeric`; any range and decimals), a
multiclass run's labels each by its whole answer (:mod:`clinlm.llm.choices`), the head's target scaler
from ``head.json``, answers bounded by the task's range -- and load the weights the pipeline
scores with: the merged folder when released, else the adapter on the base quantized with the
run's own ``BitsAndBytesConfig`` (an unquantised base is another model: p_yes 0.10-0.13 where
the pipeline gave 0.16-0.19).
"""

from __future__ import annotations

from typing import Any

from clinlm.methods.interface import CLASSIFICATION, MULTICLASS, Run, read_classes
from clinlm.prompts import prompt_text

_REPO_FILE = '''def repo_path(name=""):  # a file or folder of the repo: local folder, or from the Hub
    if os.path.isdir(REPO):
        return os.path.join(REPO, name)
    from huggingface_hub import snapshot_download
    return os.path.join(snapshot_download(REPO), name)
'''

_SFT_PROMPT = '''def prompt(statement, answer=None):  # the chat the model was trained on
    messages = ([] if SYSTEM is None else [{"role": "system", "content": SYSTEM}])
    messages.append({"role": "user", "content": statement + "\\n" + QUESTION})
    if answer is not None:  # the conversation with this answer, as in training
        messages.append({"role": "assistant", "content": answer})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
'''

_SFT_YES = '''def answer(statement):  # P(Yes): next token after the prompt, renormalised over Yes/No
    ids = tok(prompt(statement), add_special_tokens=False, return_tensors="pt")["input_ids"]
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, [yes, no]].double()
    return torch.softmax(logits, 0)[0].item()
'''

_SFT_AGE = '''def text(i):  # the answer i / 10**DEC as training wrote it: 67, 5.4, -0.5
    if DEC == 0:
        return str(i)
    whole, frac = divmod(abs(i), 10 ** DEC)
    return ("-" if i < 0 else "") + f"{whole}.{frac:0{DEC}d}"


def answer(statement):  # the median of P(answer), every answer in [LO, HI], char by char
    ids = tok(prompt(statement), add_special_tokens=False)["input_ids"]
    chars = "0123456789" + ("." if DEC else "") + ("-" if LO < 0 else "")
    tokens = [tok(c, add_special_tokens=False)["input_ids"][0] for c in chars]
    alphabet = tokens + [tok.eos_token_id]  # each step renormalised over these + end
    values = [text(i) for i in range(round(LO * 10 ** DEC), round(HI * 10 ** DEC) + 1)]
    logp = {}
    for width in sorted({len(v) for v in values}):
        group = [v for v in values if len(v) == width]
        seqs = torch.tensor([ids + [tokens[chars.index(c)] for c in v] for v in group])
        with torch.no_grad():
            steps = model(input_ids=seqs).logits[:, len(ids) - 1:, alphabet].double()
        lp = torch.log_softmax(steps, -1)
        for row, v in enumerate(group):
            logp[v] = (sum(lp[row, k, chars.index(c)].item() for k, c in enumerate(v))
                       + lp[row, len(v), len(chars)].item())
    p = torch.softmax(torch.tensor([logp[v] for v in values], dtype=torch.float64), 0)
    return float(values[int((torch.cumsum(p, 0) < 0.5 - 1e-9).sum())])
'''

_SFT_LABELS = '''def answer(statement):  # P(label) of each label's whole answer, token by token
    ids = tok(prompt(statement), add_special_tokens=False)["input_ids"]
    eot = tok.eos_token_id
    seqs = []  # each answer's tokens after the prompt, cut after the end of turn
    for t in TEXTS:
        s = tok(prompt(statement, t), add_special_tokens=False)["input_ids"][len(ids):]
        seqs.append(s[:s.index(eot) + 1] if eot in s else s)
    alphabet = sorted({t for s in seqs for t in s})  # each step renormalised over these
    logp = []
    for s in seqs:
        with torch.no_grad():
            steps = model(input_ids=torch.tensor([ids + s[:-1]])).logits[0, len(ids) - 1:]
        lp = torch.log_softmax(steps[:, alphabet].double(), -1)
        logp.append(sum(lp[k, alphabet.index(t)].item() for k, t in enumerate(s)))
    p = torch.softmax(torch.tensor(logp, dtype=torch.float64), 0)
    return dict(zip(LABELS, p.tolist()))
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
_HEAD_LABELS = '''    labels = sorted(head["labels"], key=head["labels"].get)  # output i -> its label
    return dict(zip(labels, torch.softmax(out, 0).tolist()))
'''
_HEAD_AGE = '''    y = out[0].item() * head["scaler"]["std"] + head["scaler"]["mean"]
    return min(max(y, LO), HI)  # the task's answer range, as the pipeline bounds it
'''


def _range_line(ans: dict[str, Any]) -> str:
    """``LO, HI, DEC = ...``: the answer range and decimals, as the task declares them."""
    lo, hi, dec = ans["min"], ans["max"], int(ans.get("decimals") or 0)
    if dec == 0:
        lo, hi = int(lo), int(hi)
    return f"LO, HI, DEC = {lo!r}, {hi!r}, {dec}  # the answer range, as the pipeline bounds it"


def use_snippet(run: Run, repo_id: str, merged: bool) -> list[str]:
    """The lines of the card's Python block (see module docstring)."""
    method, cls = run.cfg["method"], run.task_type == CLASSIFICATION
    multi = run.task_type == MULTICLASS
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
              _range_line(ans), "", _REPO_FILE]
    if merged:
        lines += ["# the merged weights the pipeline scores with (no peft, no bitsandbytes)",
                  'tok = AutoTokenizer.from_pretrained(repo_path("merged"))',
                  f'model = {auto}.from_pretrained(repo_path("merged"), '
                  'dtype=torch.float32).eval()']
    else:
        n_labels = len(read_classes(run.model_dir)["labels"]) if multi else 2 if cls else 1
        kw = [] if method == "sft" else [f"num_labels={n_labels}"]
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
                  f"QUESTION = {prompt_text(run.task_cfg, 'question')!r}"]
        if multi:
            classes = read_classes(run.model_dir)
            lines += [f"LABELS = {classes['labels']!r}",
                      f"TEXTS = {classes['texts']!r}  # what the model answers for each label"]
        lines += ["", "", _SFT_PROMPT, "",
                  _SFT_LABELS if multi else _SFT_YES if cls else _SFT_AGE]
    else:
        what = ("P(each label)" if multi else "P(Yes)" if cls else "the number")
        lines += ["", _HEAD.format(what=what, tail=_HEAD_LABELS if multi else
                                   _HEAD_YES if cls else _HEAD_AGE)]
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
