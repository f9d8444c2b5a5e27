"""Label answers of several tokens: the exact probability of each label's whole answer.

A multiclass sft run answers a label's text ("atrial fibrillation", "sinus rhythm", ...),
which is several tokens, and two labels may share their first tokens ("atrial fibrillation"
/ "atrial flutter"); reading the first token only would score them alike. Here each label's
answer is the token sequence the chat template gives it in training (the text and the
end-of-turn token: :func:`answer_sequences`), and its probability is the product of the
model's next-token probabilities along that sequence::

    P("atrial flutter") = P(atrial | prompt) * P(flutter | prompt atrial) * P(<end> | ...)

Each step's probabilities are the softmax renormalised over the answer alphabet (every token
of every label's answer, end-of-turn included), as :mod:`clinlm.llm.numeric` does for digits:
only those rows of the LM head are used, never the full vocabulary. The labels'
probabilities are then renormalised over the labels: the model's distribution over its
possible answers.

Cost: the prompt runs once per row (the scorer's batches, prefix cache and padding rules);
each label's answer then continues that KV cache for its own tokens (one short forward per
label and batch, a copy of the cache each), which works with any attention implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clinlm.llm.scorer import select_cache


def answer_sequences(tok: Any, render: Any, texts: Sequence[str]) -> list[list[int]]:
    """The answer tokens of each text as training saw them: ``render(answer)`` gives the chat
    text of one fixed prompt with that answer (``answer=None``: the prompt alone, ending with
    the assistant header); the answer's tokens are what follows the prompt, cut after the
    first end-of-turn token (:func:`clinlm.methods.sft.tokenize_for_sft`'s rule)."""
    prompt = tok(render(None), add_special_tokens=False)["input_ids"]
    eot = tok.eos_token_id
    out = []
    for text in texts:
        full = tok(render(text), add_special_tokens=False)["input_ids"]
        if full[:len(prompt)] != prompt:
            raise ValueError("chat template: the prompt is not a prefix of the conversation "
                             f"with the answer {text!r}")
        seq = full[len(prompt):]
        if eot in seq:
            seq = seq[:seq.index(eot) + 1]
        if not seq:
            raise ValueError(f"the answer {text!r} has no tokens after the prompt")
        out.append(list(seq))
    if len({tuple(s) for s in out}) != len(out):
        raise ValueError(f"two answers tokenize alike: {list(texts)}")
    return out


def sequence_probs(scorer: Any, prompts: Sequence[Any], seqs: Sequence[Sequence[int]],
                   desc: str = "labels") -> np.ndarray:
    """``(n_prompts, n_seqs)``: each answer sequence's probability after each prompt,
    renormalised over the answer alphabet at every step and over the sequences at the end
    (module docstring). ``scorer``: a :class:`clinlm.llm.scorer.Scorer` (or its protocol)."""
    import torch

    n, k = len(prompts), len(seqs)
    if k < 2:
        raise ValueError("scoring answers needs at least two of them")
    if n == 0:
        return np.zeros((0, k))
    alphabet = sorted({int(t) for s in seqs for t in s})
    col = {t: j for j, t in enumerate(alphabet)}

    def log_softmax(h: Any) -> np.ndarray:
        flat = h.reshape(-1, h.shape[-1]).float().cpu().numpy()
        z = scorer.token_logits(flat, alphabet).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z.reshape(*h.shape[:-1], len(alphabet))

    total = np.zeros((n, k))
    dev = scorer.device
    with torch.inference_mode():
        for idx, res, mask in scorer.prompt_batches(prompts, desc, keep_cache=True):
            b = len(idx)
            first = log_softmax(res.last_hidden_state[:, -1])  # (b, alphabet)
            n_real = mask.sum(-1)  # the answer's first token sits here
            rows = torch.arange(b, device=dev)
            for j, seq in enumerate(seqs):
                total[idx, j] = first[:, col[int(seq[0])]]
                if len(seq) == 1:
                    continue
                steps = len(seq) - 1  # feed all but the last token; read the next one each
                ids = torch.tensor([list(seq[:-1])], device=dev).expand(b, -1)
                with scorer.autocast():
                    h = scorer.decode_step(
                        None, input_ids=ids,
                        attention_mask=torch.cat([mask, mask.new_ones(b, steps)], dim=1),
                        position_ids=n_real[:, None] + torch.arange(steps, device=dev),
                        past_key_values=select_cache(res.past_key_values, rows),
                        use_cache=True).last_hidden_state
                lp = log_softmax(h)  # (b, steps, alphabet)
                nxt = [col[int(t)] for t in seq[1:]]
                total[idx, j] += lp[:, np.arange(steps), nxt].sum(axis=1)
            del res
    total -= total.max(axis=1, keepdims=True)
    p = np.exp(total)
    return p / p.sum(axis=1, keepdims=True)
