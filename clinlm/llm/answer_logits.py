"""The answer-position projection: the vocabulary is touched only where an answer is read.

Training (:func:`answer_loss`): the hidden states whose *next* token is an answer token
(labels != -100) are the only rows projected through the LM head; the model's own
``logits_to_keep`` (a boolean position mask) does the selection inside its forward, so the
call goes through whatever wraps the model (peft, DDP, FSDP, DeepSpeed) and the
49k-token vocabulary is never materialized for the prompt.

Scoring (:func:`token_logits`): from final hidden states, the logits of a few candidate
tokens only (``h @ W[ids].T``): ``Yes``/``No``, or the ten digits + end-of-turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def answer_loss(model: Any, inputs: dict[str, Any]) -> tuple[Any, int]:
    """Summed next-token cross-entropy over the answer positions, and their count.

    ``inputs`` are a collator's batch with ``labels`` (-100 outside the answer). Works for
    causal LMs and vision-language models alike: everything but ``labels`` goes to the
    model's forward.
    """
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    target = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = target != -100          # position t predicts token t + 1
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (n_answer, vocab)
    answer = target[keep[:, :-1]]
    return F.cross_entropy(logits.float(), answer, reduction="sum"), int(answer.numel())


def token_logits(lm_head: Any, hidden: np.ndarray, token_ids: list[int]) -> np.ndarray:
    """Logits of ``token_ids`` only, from final hidden states ``(n, hidden)``: ``h @ W[ids].T (+ b)``."""
    import torch
    w = lm_head.weight[token_ids].float()
    h = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)).to(w.device)
    with torch.autocast(w.device.type, enabled=False):  # a few logits: exact fp32, always
        logits = h @ w.T
        if getattr(lm_head, "bias", None) is not None:
            logits = logits + lm_head.bias[token_ids].float()
    return logits.float().detach().cpu().numpy()
