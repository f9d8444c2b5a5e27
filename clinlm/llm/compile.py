"""The compile policy of training: what ``training.torch_compile`` does on this machine and
run, and regional compilation (every decoder layer compiled in place from one graph).

Split out of :mod:`clinlm.llm.fit`, which applies it: ``fit`` asks :func:`resolve_compile`
with the run's :func:`planned_tokens` and, when it says so, calls
:func:`compile_repeated_blocks` on the model before training.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from clinlm.llm.device import device

log = logging.getLogger(__name__)


COMPILE_KEYS = ("torch_compile", "torch_compile_backend", "torch_compile_mode")
# `torch_compile: auto` compiles from this many planned training tokens on: where the cold
# compile of the decoder layer has paid for itself on a 2-core CPU, with a margin (the
# measurement: BENCHMARKS.md, "Precision"). The default `make repro` run plans ~17k tokens
# (off), a 16,000-row budget run ~1.7M (on).
AUTO_COMPILE_MIN_TOKENS = 300_000


def resolve_compile(dynamo: dict[str, Any], training: dict[str, Any],
                    planned_tokens: int | None) -> dict[str, Any] | None:
    """What ``training.torch_compile`` will do (None: off), after checking the ``dynamo`` keys
    (TorchDynamoPlugin fields); errors name the key.

    ``true`` (or a backend / mode, as in TrainingArguments) compiles; inductor on a CPU then
    needs a C++ compiler (an error says so). ``auto`` compiles the decoder layers where it pays
    off: on a CPU with a C++ compiler, with ``dynamo.use_regional_compilation``, and from
    ``AUTO_COMPILE_MIN_TOKENS`` planned training tokens; elsewhere off (GPUs: not measured).
    The returned facts (``requested``, ``reason`` for ``auto``) go to ``train_info``."""
    from clinlm.params import validate_library_section
    validate_library_section("dynamo", "dynamo", dynamo)  # the params check, for any caller
    requested = training.get("torch_compile")
    if requested not in (None, True, False, "auto"):
        raise ValueError(f"params.yaml: training.torch_compile is {requested!r}; use true, false "
                         f"or auto")
    info = {"backend": training.get("torch_compile_backend") or "inductor",
            "mode": training.get("torch_compile_mode") or "default", **dynamo}
    compiler = info["backend"] != "inductor" or device() != "cpu" \
        or bool(shutil.which("g++") or shutil.which("c++"))
    if requested == "auto":
        tokens = planned_tokens or 0
        off = ("not measured on GPUs" if device() != "cpu" else
               "no C++ compiler (g++) for inductor" if not compiler else
               "dynamo.use_regional_compilation is off" if not dynamo.get("use_regional_compilation")
               else f"{tokens:,} planned tokens < {AUTO_COMPILE_MIN_TOKENS:,}"
               if tokens < AUTO_COMPILE_MIN_TOKENS else None)
        if off:
            log.info("training.torch_compile: auto -> off (%s)", off)
            return None
        return {"requested": "auto", "reason": f"{tokens:,} planned tokens >= "
                                               f"{AUTO_COMPILE_MIN_TOKENS:,}", **info}
    # as TrainingArguments: a backend or a mode switches compilation on
    if not any(training.get(k) for k in COMPILE_KEYS):
        return None
    if not compiler:
        raise RuntimeError("training.torch_compile: inductor compiles C++ kernels on a CPU and no "
                           "C++ compiler (g++) is on PATH: install one or set torch_compile: false")
    return {"requested": True, **info}


def planned_tokens(training: dict[str, Any], n_tokens: int | None, n_rows: int,
                   world_size: int = 1) -> int | None:
    """Training tokens the run will see: epochs x ``n_tokens``, or ``max_steps`` x rows per
    step x tokens per row."""
    if not n_tokens or not n_rows:
        return None
    steps = int(training.get("max_steps") or -1)
    if steps > 0:
        rows = steps * int(training.get("per_device_train_batch_size", 8)) \
            * int(training.get("gradient_accumulation_steps", 1)) * world_size
        return int(rows * n_tokens / n_rows)
    return int(float(training.get("num_train_epochs", 3)) * n_tokens)


def compile_repeated_blocks(model: Any, info: dict[str, Any]) -> int:
    """Regional compilation, in place: ``torch.compile`` every block of each ``ModuleList``
    of same-class blocks (the decoder layers). Dynamo compiles the first and reuses the
    graph for the rest (far shorter than compiling the whole model: BENCHMARKS.md).

    In place (``nn.Module.compile``), not accelerate's ``compile_regions``: that builds a
    copy of the module tree, and under the Trainer the copy was never called (no frame
    traced); in place, parameter names, saving and DDP wrapping are untouched.
    Returns the number of blocks compiled."""
    import torch
    kw = {"backend": info["backend"], "mode": None if info["mode"] == "default" else info["mode"],
          **{k: info[k] for k in ("dynamic", "fullgraph", "options") if info.get(k) is not None}}
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 \
                and len({type(m) for m in module}) == 1:
            for block in module:
                block.compile(**kw)
            n += len(module)
    return n
