"""Numeric answers (ages) from the model's distribution over numbers, not a greedy sample.

In training a regression answer is the label rounded to the task's ``answer.decimals``
(``67``; ``5.4`` with one decimal; ``-3`` below zero) followed by the chat template's
end-of-turn token (:func:`clinlm.prompts.format_answer`), and digits, the decimal point and
the minus sign are single tokens, so the model's probability of the answer ``67`` is::

    P(67) = P('6' | prompt) * P('7' | prompt 6) * P(<end> | prompt 67)

:func:`number_probs` computes this exactly for *every* number of the grid ``[lo, hi]`` in
steps of ``10 ** -decimals`` (e.g. 18-110: 2- and 3-digit numbers; 4.0-14.0 by 0.1), then
renormalises over that set. Each step's next-token probabilities are the model's softmax
*renormalised over the answer alphabet* (the ten digit tokens, ``.`` and ``-`` when the grid
needs them, + end-of-turn), so the result is the model's distribution over those strings
conditioned on the answer being a number of the grid. Only the 11 alphabet rows of the
LM head are ever used (:func:`clinlm.llm.answer_logits.token_logits`); full-vocabulary
logits are never computed.

Cost (:func:`number_probs`): per batch of prompts, one forward pass over the prompts
(``use_cache=True``; the hidden state at the last prompt token gives the first digit), then,
on top of that KV cache -- the prompt is never re-run -- one more forward pass that feeds
every valid digit prefix as one token of a prefix tree (18-110: 9 + 84 + 11 = 104 tokens
per row) under a 4-D attention mask letting each token see only the prompt and its own
ancestors ("tree attention"). Its hidden states give the next-token distribution after
every prefix, i.e. all digit positions and the end-of-turn step at once. The ``levels``
fallback (one pass per digit position, prompt cache copied per (row, prefix) pair) works with
any attention implementation; both agree to float rounding (tests/llm/test_numeric.py,
timings in BENCHMARKS.md).

:func:`summarize` turns the distribution into the point estimate (median for MAE, mean for
MSE) and a 90 % interval (5th/95th percentiles); :func:`decode_numeric` does both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clinlm.llm.scorer import select_cache
from clinlm.prompts import number_text

DIGITS = "0123456789"


def grid(lo: float, hi: float, decimals: int = 0) -> tuple[np.ndarray, list[str]]:
    """The numeric answers of ``[lo, hi]`` in steps of ``10 ** -decimals``: their values and
    their texts as training writes them (``5.0``, ``-0.5``, ``67``), from an integer grid (no
    float drift: ``-0.0`` never appears). ``lo``/``hi`` must lie on the grid."""
    scale = 10 ** int(decimals)
    a, b = round(lo * scale), round(hi * scale)
    if abs(a - lo * scale) > 1e-6 or abs(b - hi * scale) > 1e-6:
        raise ValueError(f"the answer range [{lo}, {hi}] is not on a grid of {decimals} "
                         "decimal(s)")
    if b < a:
        raise ValueError(f"need lo <= hi, got lo={lo}, hi={hi}")
    ints = np.arange(a, b + 1)
    texts = [number_text(i, decimals) for i in ints]
    return (ints if decimals == 0 else ints / scale), texts


def summarize(values: np.ndarray, probs: np.ndarray,
              quantiles: tuple[float, float] = (0.05, 0.95)) -> dict[str, np.ndarray]:
    """Median, mean, quantiles and mode of discrete distributions, one per row.

    Args:
        values: ``(n_values,)`` the support, strictly increasing.
        probs: ``(n_rows, n_values)`` non-negative weights (each row is normalised here).
        quantiles: the lower and upper quantile levels of the interval.

    Returns:
        ``{"median", "mean", "lo", "hi", "mode", "p_max"}``, each ``(n_rows,)`` float. A
        quantile ``q`` is the smallest value whose cumulative probability reaches ``q``
        (the inverse CDF; within 1e-9, so an exact 0.5 split gives the lower median).
    """
    values = np.asarray(values, dtype=np.float64)
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if values.ndim != 1 or p.shape[1] != len(values):
        raise ValueError(f"values {values.shape} and probs {p.shape} do not match")
    if len(values) > 1 and not np.all(np.diff(values) > 0):
        raise ValueError("values must be strictly increasing")
    total = p.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(total <= 0):
        raise ValueError("probs must be finite, non-negative, with a positive sum per row")
    p = p / total
    cdf = np.cumsum(p, axis=1)

    def quantile(q: float) -> np.ndarray:
        idx = np.minimum((cdf < q - 1e-9).sum(axis=1), len(values) - 1)
        return values[idx]

    return {"median": quantile(0.5), "mean": p @ values, "lo": quantile(quantiles[0]),
            "hi": quantile(quantiles[1]), "mode": values[p.argmax(axis=1)],
            "p_max": p.max(axis=1)}


def digit_token_ids(tok: Any, chars: str = DIGITS) -> dict[str, int]:
    """``{'0': id, ..., '9': id}`` (and any other ``chars``: ``.``, ``-``); raises
    ``ValueError`` when one of them is not one token."""
    ids: dict[str, int] = {}
    for d in chars:
        enc = tok(d, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"{d!r} is {len(enc)} tokens {enc} in this tokenizer; "
                             "numeric decoding needs one token per character")
        ids[d] = int(enc[0])
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"answer characters share token ids: {ids}")
    return ids


def check_digit_tokenization(tok: Any, prompt: str, numbers: list[str],
                             digit_ids: dict[str, int]) -> None:
    """Raise ``ValueError`` unless ``prompt + number`` tokenizes as prompt, then one token per digit.

    That is how the answers were tokenized in training (the chat template appends the
    answer text to the prompt), so it is the sequence whose probability we enumerate.
    """
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    fulls = tok([prompt + s for s in numbers], add_special_tokens=False)["input_ids"]
    for s, full in zip(numbers, fulls, strict=True):
        if list(full[:len(base)]) != list(base) or \
                list(full[len(base):]) != [digit_ids[c] for c in s]:
            raise ValueError(f"the answer {s!r} after the prompt does not tokenize digit by "
                             f"digit ({full[len(base):]} vs {[digit_ids[c] for c in s]}); "
                             "numeric decoding needs one token per digit")


TREE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take the custom 4-D mask of the tree pass."""


class _Prefixes:
    """Every digit prefix that needs a next-token distribution: ``""`` and each prefix of a number."""

    def __init__(self, numbers: list[str]) -> None:
        self.max_len = max(map(len, numbers))
        self.levels = [sorted({s[:k] for s in numbers if len(s) >= k})
                       for k in range(self.max_len + 1)]
        self.all = [p for lev in self.levels for p in lev]  # "" first, then by length
        self.index = {p: i for i, p in enumerate(self.all)}
        nodes = self.all[1:]  # the tree: one node (token) per non-empty prefix
        self.anc = np.array([[q != "" and p.startswith(q) for q in nodes] for p in nodes])


def number_probs(scorer: Any, prompts: list[Any], lo: float, hi: float, strategy: str = "auto",
                 chunk_size: int | None = None, desc: str = "numeric",
                 decimals: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The exact probability of every answer of the grid ``lo..hi`` (:func:`grid`) for each
    prompt.

    Args:
        scorer: a :class:`clinlm.llm.scorer.Scorer` (or one following its protocol).
        prompts: the scorer's input items (chat-template texts ending with the assistant
            header; ``(text, image)`` pairs for the vision-language scorer).
        lo, hi: the answer range (on the grid of ``decimals``).
        strategy: how the digit positions after the first are scored, on top of the
            prompts' KV cache (the prompt itself runs once per row in every strategy):

            * ``"tree"``: one forward pass per batch of rows feeding every valid digit prefix
              as one token of a prefix tree (18-110: 104 tokens), with a 4-D attention mask
              so each token sees the prompt and its own ancestors only (tree attention;
              needs ``sdpa`` or ``eager`` attention);
            * ``"levels"``: one pass per digit position ``k``: each (row, prefix of length
              ``k``) pair feeds its ``k`` digit tokens on a copy of the row's prompt cache,
              ``chunk_size`` pairs per forward (any attention implementation);
            * ``"auto"``: ``tree`` when the attention implementation allows it, else ``levels``.
        chunk_size: ``levels`` only: (row, prefix) pairs per forward (default: the scorer's
            batch size; each holds a copy of its row's prompt KV cache).
        decimals: the answers' decimals (0: whole numbers).

    Returns:
        ``(values, probs)``: ``values`` ``(n_values,)``, the grid; ``probs``
        ``(n_prompts, n_values)`` float64, rows summing to 1 (see the module docstring).
    """
    import torch

    impl = scorer.attention_implementation
    if strategy == "auto":
        strategy = "tree" if impl in TREE_ATTENTION else "levels"
    if strategy not in ("tree", "levels"):
        raise ValueError(f"strategy must be 'auto', 'tree' or 'levels', not {strategy!r}")
    if strategy == "tree" and impl not in TREE_ATTENTION:
        raise ValueError(f"strategy 'tree' needs {TREE_ATTENTION} attention, not {impl!r}")
    values, numbers = grid(lo, hi, decimals)
    n = len(prompts)
    if n == 0:
        return values, np.zeros((0, len(values)))
    tok = scorer.tok
    chars = DIGITS + ("." if decimals else "") + ("-" if lo < 0 else "")
    dig = digit_token_ids(tok, chars)
    eot = tok.eos_token_id
    if eot is None:
        raise ValueError("the tokenizer has no eos (end-of-turn) token")
    if eot in dig.values():
        raise ValueError("the end-of-turn token is a digit token")
    check_digit_tokenization(tok, scorer.prompt_text(prompts[0]), numbers, dig)
    # column j < len(chars): character chars[j] (j < 10: digit j); the last one: end
    alphabet = [dig[d] for d in chars] + [int(eot)]
    pre = _Prefixes(numbers)
    logp = np.zeros((n, len(pre.all), len(alphabet)), dtype=np.float64)

    def log_softmax(h: torch.Tensor) -> np.ndarray:
        """(..., hidden) -> (..., len(alphabet)) log-probabilities over the answer alphabet."""
        flat = h.reshape(-1, h.shape[-1]).float().cpu().numpy()
        logits = scorer.token_logits(flat, alphabet).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        out = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return out.reshape(*h.shape[:-1], len(alphabet))

    dev = scorer.device
    nodes = pre.all[1:]
    node_tok = torch.tensor([dig[p[-1]] for p in nodes], device=dev)
    node_depth = torch.tensor([len(p) - 1 for p in nodes], device=dev)
    anc = torch.from_numpy(pre.anc).to(dev)
    with torch.inference_mode():
        for idx, res, mask in scorer.prompt_batches(prompts, desc, keep_cache=True):
            cache = res.past_key_values
            logp[idx, pre.index[""]] = log_softmax(res.last_hidden_state[:, -1])
            n_real = mask.sum(-1)  # real prompt tokens per row = the first digit's position
            b = len(idx)
            if strategy == "tree":
                # query node i sees the row's real prompt tokens and its own ancestors + itself
                see = torch.cat([mask.bool()[:, None, :].expand(b, len(nodes), -1),
                                 anc[None].expand(b, -1, -1)], dim=2)[:, None]
                if impl == "eager":  # additive mask
                    see = torch.zeros(see.shape, device=dev).masked_fill(
                        ~see, torch.finfo(torch.float32).min)
                with scorer.autocast():
                    h = scorer.decode_step(None, input_ids=node_tok.expand(b, -1), attention_mask=see,
                              position_ids=n_real[:, None] + node_depth,
                              past_key_values=cache, use_cache=True).last_hidden_state
                logp[idx[:, None], np.arange(1, len(pre.all))[None, :]] = log_softmax(h)
            else:
                _levels(scorer, pre, dig, cache, mask, n_real, idx, logp, log_softmax,
                        int(chunk_size or scorer.batch_size), dev)
            del cache, res

    # log P(number) = its character steps + the end-of-turn step
    total = np.zeros((n, len(numbers)))
    for j, s in enumerate(numbers):
        for k, c in enumerate(s):
            total[:, j] += logp[:, pre.index[s[:k]], chars.index(c)]
        total[:, j] += logp[:, pre.index[s], len(chars)]
    total -= total.max(axis=1, keepdims=True)
    probs = np.exp(total)
    return values, probs / probs.sum(axis=1, keepdims=True)


def _levels(scorer: Any, pre: _Prefixes, dig: dict[str, int], cache: Any, mask: Any, n_real: Any,
            idx: np.ndarray, logp: np.ndarray, log_softmax: Any, chunk: int, dev: Any) -> None:
    """The ``levels`` strategy of :func:`number_probs` for one batch of rows (fills ``logp``)."""
    import torch

    b = len(idx)
    for k in range(1, pre.max_len + 1):
        level = pre.levels[k]
        ptok = torch.tensor([[dig[c] for c in p] for p in level], device=dev)  # (P, k)
        cols_all = np.array([pre.index[p] for p in level])
        steps = torch.arange(k, device=dev)
        for s in range(0, b * len(level), chunk):
            pair = torch.arange(s, min(s + chunk, b * len(level)), device=dev)
            rows, cols = pair // len(level), pair % len(level)
            sub = select_cache(cache, rows)
            m = torch.cat([mask[rows], mask.new_ones(len(pair), k)], dim=1)
            with scorer.autocast():
                h = scorer.decode_step(rows, input_ids=ptok[cols], attention_mask=m,
                          position_ids=n_real[rows, None] + steps,
                          past_key_values=sub, use_cache=True).last_hidden_state[:, -1]
            logp[idx[rows.cpu().numpy()], cols_all[cols.cpu().numpy()]] = log_softmax(h)
            del sub


def decode_numeric(scorer: Any, prompts: list[Any], lo: float, hi: float, loss: str = "mae",
                   strategy: str = "auto", chunk_size: int | None = None,
                   decimals: int = 0) -> dict[str, np.ndarray]:
    """Point estimate and 90 % interval of the numeric answer for each prompt (the grid of
    ``decimals`` in ``[lo, hi]``).

    Returns ``{"y_pred", "y_lo", "y_hi", "p_max"}`` (``(n,)`` float arrays): ``y_pred`` is
    the median of the answer distribution (``loss="mae"``, the MAE-optimal point) or its
    mean (``loss="mse"``); ``y_lo``/``y_hi`` its 5th/95th percentiles (widened to hold a mean
    outside them); ``p_max`` the
    probability of the most likely number (a confidence measure). ``strategy`` and
    ``chunk_size``: :func:`number_probs`.
    """
    if loss not in ("mae", "mse"):
        raise ValueError(f"loss must be 'mae' or 'mse', not {loss!r}")
    values, probs = number_probs(scorer, prompts, lo, hi, strategy=strategy, chunk_size=chunk_size,
                                 decimals=decimals)
    if len(prompts) == 0:
        empty = np.zeros(0)
        return {"y_pred": empty, "y_lo": empty, "y_hi": empty, "p_max": empty}
    st = summarize(values, probs)
    pred = st["median"] if loss == "mae" else st["mean"]
    # the median lies between the 5th and 95th percentiles; a skewed distribution's mean may
    # not (96 % at 18, 4 % at 110: mean 21.7, 95th percentile 18): widen to hold it
    return {"y_pred": pred, "y_lo": np.minimum(st["lo"], pred),
            "y_hi": np.maximum(st["hi"], pred), "p_max": st["p_max"]}
