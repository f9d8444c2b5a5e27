"""``Scorer``: batched single-pass scoring of prompts, read at the last prompt token.

The protocol :mod:`clinlm.llm.numeric` and the methods use (no private attributes):

* ``prompt_text(item)``: the text of one input item (a prompt string here; a
  ``(text, image)`` pair for the vision-language scorer);
* ``prompt_batches(items, desc, keep_cache)``: run every item once, yield
  ``(idx, out, mask)`` per batch;
* ``decode_step(rows, **kw)``: one more forward step on a batch's KV cache;
* ``autocast()``, ``token_logits(hidden, ids)``, ``attention_implementation``.

The expensive part is the transformer body; the vocabulary projection happens only at the
last prompt position and only for the candidate tokens (:func:`clinlm.llm.answer_logits.token_logits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clinlm.llm import answer_logits
from clinlm.llm.builders import is_quantized, resolve_dtype


def shared_prefix_length(enc: list[list[int]], min_tokens: int = 8) -> int:
    """Tokens every sequence starts with, keeping >= 1 own token per row; 0 if < ``min_tokens``."""
    if len(enc) < 2:
        return 0
    first, n = enc[0], min(len(e) for e in enc) - 1
    for e in enc[1:]:
        k = 0
        while k < n and e[k] == first[k]:
            k += 1
        n = k
    return n if n >= min_tokens else 0


def length_batches(lengths: Sequence[int], batch_size: int, exact: bool) -> list[np.ndarray]:
    """Row indices per batch, rows sorted by token length (little padding).

    ``exact``: a batch holds rows of one length only, so no row is ever padded and each row
    runs the very kernels it runs alone. Why: under bf16/fp16, padding changes a row's
    attention path (a mask instead of none, another reduction length), and its answer then
    moved with its batch-mates (tests/test_batch_invariance.py). Matmuls whose rows do not
    depend on the other rows are assumed (BENCHMARKS.md, batch invariance).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    if not exact:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[np.ndarray] = []
    lengths = np.asarray(lengths)[order]
    starts = np.flatnonzero(np.r_[True, lengths[1:] != lengths[:-1]])
    for a, b in zip(starts, [*starts[1:], len(order)], strict=True):
        out += [order[i:min(i + batch_size, b)] for i in range(a, b, batch_size)]
    return out


def reduced_precision(model: Any, autocast_dtype: str | None) -> bool:
    """Whether scoring rounds to bf16/fp16 somewhere (autocast, or weights in that dtype):
    then batches are padding-free (:func:`length_batches`); float32 is batch-invariant to
    float rounding already."""
    import torch
    target = resolve_dtype(autocast_dtype)
    if target in (torch.bfloat16, torch.float16):
        return True
    return any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())


def select_cache(cache: Any, rows: Any) -> Any:
    """A copy of a KV cache holding only batch ``rows`` (repeats allowed); the input is untouched."""
    import copy

    if hasattr(cache, "layers") and hasattr(cache, "batch_select_indices"):
        sub = copy.copy(cache)
        sub.layers = [copy.copy(layer) for layer in cache.layers]
        sub.batch_select_indices(rows)  # re-binds each layer's keys/values to new tensors
        return sub
    if isinstance(cache, tuple | list):  # legacy ((k, v), ...) format
        return tuple(tuple(t[rows] for t in layer) for layer in cache)
    raise TypeError(f"unsupported KV cache type {type(cache).__name__}")


def first_token_ids(tok: Any, choices: list[str]) -> list[int]:
    """The first token of each answer string (must differ between choices)."""
    ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in choices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {choices} share a first token; cannot score them apart")
    return ids


def autocast_dtype(cfg: dict[str, Any]) -> str | None:
    """``predict.autocast_dtype`` if set (``auto``: this machine's precision), else the
    training precision (bf16/fp16, ``bf16: auto`` resolved), else None (no autocast).

    A quantized base merged into bf16/fp16 weights (``dtype``) gets that dtype whatever the
    setting: its embeddings and norms stay float32 (kbit preparation), and a float32
    activation cannot enter a bf16 linear layer without autocast.
    """
    from clinlm.llm.precision import resolve_cfg
    cfg = resolve_cfg(cfg)
    pcfg = cfg.get("predict") or {}
    chosen = pcfg.get("autocast_dtype")
    if chosen is None:
        training = cfg.get("training") or {}
        chosen = "bfloat16" if training.get("bf16") else "float16" if training.get("fp16") else None
    chosen = None if chosen in (None, "float32") else chosen
    merged = str(cfg.get("dtype") or "float32")
    if (chosen is None and merged in ("bfloat16", "float16") and pcfg.get("merge_adapter", True)
            and is_quantized(cfg.get("bnb"))):
        return merged
    return chosen


def autocast(model: Any, dtype: str | None):
    """``torch.autocast`` on the model's device in ``dtype`` (``auto`` resolved), or nothing
    when ``dtype`` is None or float32."""
    import torch
    target = resolve_dtype(dtype)
    if target is None or target == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=target)


class Scorer:
    """A (LoRA-merged) causal LM and its tokenizer, scoring chat prompts in batches."""

    def __init__(self, model: Any, tok: Any, batch_size: int = 32, max_length: int = 256,
                 autocast_dtype: str | None = None, prefix_cache: bool = True) -> None:
        self.model, self.tok = model.eval(), tok
        self.prefix_cache = prefix_cache
        self.tok.padding_side = "left"
        self.batch_size, self.max_length = batch_size, max_length
        self.autocast_dtype = autocast_dtype
        #: padding-free batches (a row's answer independent of its batch-mates), see
        #: :func:`length_batches`
        self.exact = reduced_precision(model, autocast_dtype)
        #: the token prefix the prefix cache reuses; None: the prefix the prompts of one call
        #: share. Set it (``template_prefix``) to make the split independent of the batch.
        self.prefix_ids: list[int] | None = None
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = causal.get_decoder()
        self.lm_head = causal.get_output_embeddings()

    @classmethod
    def from_run(cls, model_dir: str | Path, cfg: dict[str, Any]) -> Scorer:
        """The base as in training (same bnb layout) + the saved adapter of a trained run."""
        from clinlm.llm.load import load_model
        from clinlm.llm.precision import plan_from_model
        from clinlm.llm.tokenizer import load_tokenizer

        plan_from_model(model_dir)  # `auto` precision as in training (the run's size)
        pcfg = cfg["predict"]
        model = load_model(cfg, "causal", adapter=model_dir)
        return cls(model, load_tokenizer(model_dir), pcfg["batch_size"], pcfg["max_length"],
                   autocast_dtype(cfg), pcfg["prefix_cache"])

    @property
    def attention_implementation(self) -> str:
        cfg = getattr(self.decoder, "config", None)
        return str(getattr(cfg, "_attn_implementation", None) or "eager")

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def autocast(self):
        """The scoring precision context (see :func:`autocast_dtype`)."""
        return autocast(self.model, self.autocast_dtype)

    def prompt_text(self, item: Any) -> str:
        """The text of one input item (here the item is the prompt)."""
        return item

    def decode_step(self, rows: Any, **kw: Any) -> Any:
        """One forward step on the prompts' KV cache; ``rows``: the batch rows it continues
        (None = all; a scorer whose steps need per-row state other than the cache uses it)."""
        del rows
        return self.decoder(**kw)

    def prompt_batches(self, prompts: Sequence[str], desc: str = "scoring",
                       keep_cache: bool = False) -> Iterator[tuple[np.ndarray, Any, Any]]:
        """Run every prompt once; yield ``(idx, out, mask)`` per batch.

        ``idx``: the batch's rows (indices into ``prompts``); ``out``: the decoder output
        (``last_hidden_state[:, -1]`` is each row's last prompt token; ``past_key_values``
        its KV cache when ``keep_cache``); ``mask``: the attention mask over that cache's
        positions, so ``mask.sum(-1)`` is each row's real token count.

        Prompts are sorted by length so batches carry little padding. Left padding +
        explicit position ids make a padded row compute exactly what it would alone. With
        ``prefix_cache`` the token prefix every prompt shares (the system prompt and chat
        header) runs once; its KV cache is reused by every batch, which then runs only the
        rows' own tokens (padding sits between prefix and row). Inference mode and autocast
        stay on while the consumer handles a batch.
        """
        import torch

        enc = self.tok(list(prompts), add_special_tokens=False, truncation=True,
                       max_length=self.max_length)["input_ids"]
        n_pre, head = 0, None
        if self.prefix_cache and self.prefix_ids:  # a fixed prefix: the same split alone
            n_pre, head = len(self.prefix_ids), list(self.prefix_ids)
            if not all(len(e) > n_pre and e[:n_pre] == head for e in enc):
                n_pre = 0  # a prompt that does not start with it: no cache for this call
        elif self.prefix_cache:
            n_pre = shared_prefix_length(enc)
            head = enc[0][:n_pre]
        batches = length_batches([len(e) for e in enc], self.batch_size, self.exact)
        dev = self.device
        with torch.inference_mode(), self.autocast():
            prefix = None
            if n_pre:
                prefix = self.decoder(input_ids=torch.tensor([head], device=dev),
                                      use_cache=True).past_key_values
            for idx in tqdm(batches, desc=desc, unit="batch"):
                batch = self.tok.pad({"input_ids": [enc[i][n_pre:] for i in idx]},
                                     return_tensors="pt")
                mask = batch["attention_mask"].to(dev)
                pos = n_pre + (mask.cumsum(-1) - 1).clamp(min=0)
                kw = {}
                if prefix is not None:
                    kw["past_key_values"] = select_cache(prefix, [0] * len(idx))
                    mask = torch.cat([mask.new_ones(len(idx), n_pre), mask], dim=1)
                out = self.decoder(input_ids=batch["input_ids"].to(dev), attention_mask=mask,
                                   position_ids=pos, use_cache=prefix is not None or keep_cache,
                                   **kw)
                yield idx, out, mask

    def last_hidden(self, prompts: Sequence[Any], desc: str = "scoring") -> np.ndarray:
        """Final hidden state at the last prompt token, (n_prompts, hidden) float32, in input order."""
        out = np.zeros((len(prompts), self.lm_head.weight.shape[1]), dtype=np.float32)
        for idx, res, _ in self.prompt_batches(prompts, desc):
            out[idx] = res.last_hidden_state[:, -1].float().cpu().numpy()
        return out

    def token_logits(self, hidden: np.ndarray, token_ids: list[int]) -> np.ndarray:
        """Logits of ``token_ids`` only, from final hidden states."""
        return answer_logits.token_logits(self.lm_head, hidden, token_ids)

    def first_token_ids(self, choices: list[str]) -> list[int]:
        """The first token of each answer string (see :func:`first_token_ids`)."""
        return first_token_ids(self.tok, choices)

    def choice_probs(self, prompts: Sequence[Any], choices: list[str]) -> np.ndarray:
        """P(choice) renormalised over ``choices``, from each choice's first token; (n, k)."""
        logits = self.token_logits(self.last_hidden(prompts), self.first_token_ids(choices))
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)
