"""``auto`` precision: bfloat16 where this machine multiplies bf16 fast, float32 elsewhere.

One decision, made here and nowhere else, by :func:`resolve_precision`:

* CUDA: bf16 when the GPU computes it natively (``torch.cuda.is_bf16_supported`` without
  emulation: Ampere and newer);
* CPU: bf16 with AMX-BF16 (Xeon Sapphire Rapids+) or AVX512-BF16 (Zen 4/5, Cooper Lake),
  where bf16 matmuls are several times faster than fp32; float32 on AVX2-only CPUs, where
  bf16 is emulated and far slower (the measurements: BENCHMARKS.md, docs/results.md "Why
  the defaults are what they are");
* anything else (MPS, XPU, ARM): float32, the safe default.

On a CPU, ``auto`` is also a question of the run's size (:func:`plan`): a run that plans
fewer than :data:`AUTO_BF16_MIN_TOKENS` training tokens trains and predicts in float32
whatever the flags say. Why: two bf16 CPUs (AMX on a Xeon, AVX512-BF16 on a Zen) round
bf16 matmuls differently, and the default pipeline's metrics moved between them; in
float32 the same runs agree to 1e-3 across kernel sets (tests/test_cpu_repro.py). Short runs (the default ``dvc repro``, tests, a first try) are
where a user compares metrics with the committed ones, and there float32 costs seconds to
minutes; long runs keep bf16's speed. The same threshold as ``torch_compile: auto``
(``clinlm.llm.compile.AUTO_COMPILE_MIN_TOKENS``): from there on a run gets both speed-ups.
Prediction follows its training run (:func:`plan_from_model` reads the recorded size), so a
model trained in float32 is scored in float32.

The decision reads the CPU's feature flags (``torch.cpu.get_capabilities``, /proc/cpuinfo as a
fallback) rather than timing a matmul: on a shared machine a timing can flip between two runs
of the same stage, and the resolved precision lands in ``train_info.json`` (a DVC output).
``CLINLM_PRECISION=float32|bfloat16`` overrides it (tests, benchmarks, a machine the flags
misjudge).

The params keys that accept ``auto`` (:data:`AUTO_KEYS`) are resolved by the code that reads
them: ``dtype`` and ``bnb.bnb_4bit_compute_dtype`` in ``clinlm.llm.load``/``builders``
(``resolve_dtype``), ``training.bf16`` in ``builders.build_training_kwargs``, the adapter
dtype in ``clinlm.llm.fit`` and ``predict.autocast_dtype`` in ``clinlm.llm.scorer``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

AUTO = "auto"
ENV = "CLINLM_PRECISION"
CHOICES = ("bfloat16", "float32")
# (section, key) of a models.<m> entry that may say `auto`; section None = the entry itself
AUTO_KEYS: tuple[tuple[str | None, str], ...] = (
    (None, "dtype"), ("bnb", "bnb_4bit_compute_dtype"), ("training", "bf16"),
    ("predict", "autocast_dtype"))
# CPU flags (torch.cpu.get_capabilities names = /proc/cpuinfo names) that make bf16 fast
FAST_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# On a CPU, `auto` picks bf16 only for runs planning at least this many training tokens (see
# the module doc; BENCHMARKS.md "Precision" has the speeds). The default pipeline's runs plan
# ~17k tokens (float32), a 16,000-row run ~1.7M (bf16 where the CPU is fast).
AUTO_BF16_MIN_TOKENS = 300_000
# this process's run (a stage trains or predicts one): {"planned_tokens": int | None}
_PLAN: dict[str, Any] = {}


def cpu_flags() -> dict[str, bool]:
    """This CPU's feature flags as booleans: torch's cpuinfo view, else /proc/cpuinfo."""
    import torch
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        return {k: v for k, v in get().items() if isinstance(v, bool)}
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return dict.fromkeys(line.split(":", 1)[1].split(), True)
    return {}


def cpu_name() -> str:
    """The CPU's model name (``AMD EPYC``, ``Intel(R) Xeon(R) ...``), or ``unknown``."""
    import torch
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    name = get().get("cpu_name") if get is not None else None
    path = Path("/proc/cpuinfo")
    if path.is_file():  # the full model name (torch's cpuinfo may shorten it)
        for line in path.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return str(name or "unknown")


def decide_cpu(flags: Mapping[str, Any]) -> tuple[str, str]:
    """``(dtype, reason)`` for a CPU with these flags (a pure function: tests mock the flags)."""
    for flag in FAST_CPU_FLAGS:
        if flags.get(flag):
            return "bfloat16", f"cpu {flag}"
    have = "avx512" if flags.get("avx512_f") else "avx2" if flags.get("avx2") else "no avx2"
    return "float32", f"cpu {have} without avx512_bf16/amx_bf16 (bf16 emulated)"


def decide_cuda(bf16_native: bool, name: str = "cuda") -> tuple[str, str]:
    """``(dtype, reason)`` for a CUDA device that does (not) compute bf16 natively."""
    if bf16_native:
        return "bfloat16", f"cuda bf16 ({name})"
    return "float32", f"cuda without native bf16 ({name})"


@functools.cache
def _detect(device_type: str) -> tuple[str, str]:
    """The hardware decision for one device type (cached: flags do not change in a process)."""
    import torch
    if device_type == "cuda":
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no device"
        return decide_cuda(torch.cuda.is_available()
                           and torch.cuda.is_bf16_supported(including_emulation=False), name)
    if device_type == "cpu":
        return decide_cpu(cpu_flags())
    return "float32", f"{device_type}: bf16 not measured here"


def plan(planned_tokens: int | None) -> None:
    """Tell ``auto`` how many training tokens this process's run plans (None: unknown, the
    hardware decision alone). Called by the methods before loading the model (training) and
    by :func:`plan_from_model` (prediction); it holds for the rest of the process."""
    _PLAN.clear()
    if planned_tokens is not None:
        _PLAN["planned_tokens"] = int(planned_tokens)


def plan_training(training: Mapping[str, Any], n_tokens: int | None, n_rows: int) -> None:
    """:func:`plan` from a ``training`` section and the rows about to be trained on
    (``clinlm.llm.compile.planned_tokens``: epochs or ``max_steps``, every process's rows)."""
    from clinlm.llm.compile import planned_tokens
    plan(planned_tokens(dict(training), n_tokens, n_rows, int(os.environ.get("WORLD_SIZE", 1))))


def plan_from_model(model_dir: str | Path) -> None:
    """:func:`plan` as the run that trained ``model_dir`` did (its ``train_info.json``
    records the planned tokens); no record (an older or foreign folder): unknown."""
    import json
    path = Path(model_dir) / "train_info.json"
    tokens = None
    if path.is_file():
        tokens = (json.loads(path.read_text()).get("precision") or {}).get("planned_tokens")
    plan(tokens)


def clear_plan() -> None:
    """Forget the run's size (tests: one process trains several runs)."""
    _PLAN.clear()


def _device_type(device: Any) -> str:
    if device is None:
        from clinlm.llm.device import local_device
        device = local_device()
    return getattr(device, "type", None) or str(device).split(":")[0]


def resolve(device: Any = None) -> tuple[str, str]:
    """``(dtype, reason)`` that ``auto`` means on ``device`` (default: this process's)."""
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != AUTO:
        if forced not in CHOICES:
            raise ValueError(f"{ENV}={forced!r}: expected one of {', '.join(CHOICES)} or auto")
        return forced, f"env {ENV}={forced}"
    kind = _device_type(device)
    dtype, reason = _detect(kind)
    tokens = _PLAN.get("planned_tokens")
    if kind != "cpu" or dtype != "bfloat16" or tokens is None:
        return dtype, reason
    if tokens < AUTO_BF16_MIN_TOKENS:
        return "float32", (f"{tokens:,} planned tokens < {AUTO_BF16_MIN_TOKENS:,}: float32, "
                           f"the same on every CPU ({reason} would be bf16)")
    return dtype, f"{reason}, {tokens:,} planned tokens >= {AUTO_BF16_MIN_TOKENS:,}"


def resolve_precision(device: Any = None) -> str:
    """``"bfloat16"`` or ``"float32"``: what ``auto`` means on ``device`` (see module doc)."""
    return resolve(device)[0]


def resolve_value(section: str | None, key: str, value: Any, device: Any = None) -> Any:
    """A params value with ``auto`` replaced: a dtype name, or a bool for ``training.bf16``."""
    if value != AUTO:
        return value
    if (section, key) not in AUTO_KEYS:
        raise ValueError(f"{section + '.' if section else ''}{key}: `auto` is only accepted "
                         f"for {', '.join(_dotted(s, k) for s, k in AUTO_KEYS)}")
    dtype = resolve_precision(device)
    return dtype == "bfloat16" if key == "bf16" else dtype


def resolve_cfg(cfg: Mapping[str, Any], device: Any = None) -> dict[str, Any]:
    """A copy of a ``models.<m>`` section with every ``auto`` of :data:`AUTO_KEYS` resolved."""
    out = dict(cfg)
    for section, key in AUTO_KEYS:
        if section is None:
            if key in out:
                out[key] = resolve_value(None, key, out[key], device)
        elif isinstance(out.get(section), Mapping) and key in out[section]:
            out[section] = {**out[section],
                            key: resolve_value(section, key, out[section][key], device)}
    return out


def report(cfg: Mapping[str, Any], device: Any = None) -> dict[str, Any]:
    """What ``train_info`` records: ``{"requested", "resolved", "reason", "keys"}``, and
    ``planned_tokens`` when the run planned its size (:func:`plan`; prediction reads it back).

    ``requested`` is ``auto`` when any precision key says so (``resolved``/``reason`` are then
    this machine's decision), else ``explicit`` (``resolved``: the training compute dtype,
    reason ``params``). ``keys``: each precision key's effective value.
    """
    asked = any(_get(cfg, s, k) == AUTO for s, k in AUTO_KEYS)
    resolved = resolve_cfg(cfg, device)
    keys = {_dotted(s, k): _get(resolved, s, k) for s, k in AUTO_KEYS}
    if asked:
        dtype, reason = resolve(device)
        return {"requested": AUTO, "resolved": dtype, "reason": reason, "keys": keys, **_PLAN}
    training = resolved.get("training") or {}
    bnb = resolved.get("bnb") or {}
    compute = ("bfloat16" if training.get("bf16") else "float16" if training.get("fp16")
               else bnb.get("bnb_4bit_compute_dtype") or resolved.get("dtype") or "float32")
    return {"requested": "explicit", "resolved": str(compute).removeprefix("torch."),
            "reason": "params", "keys": keys}


def _get(cfg: Mapping[str, Any], section: str | None, key: str) -> Any:
    where = cfg if section is None else (cfg.get(section) or {})
    return where.get(key) if isinstance(where, Mapping) else None


def _dotted(section: str | None, key: str) -> str:
    return key if section is None else f"{section}.{key}"
