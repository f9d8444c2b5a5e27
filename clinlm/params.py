"""Load ``params.yaml`` and validate it: an unknown key or a wrong type stops with its name.

Library sections are checked against the library itself, so params keys are named exactly
like the fields they feed:
  * ``bnb``      -> ``transformers.BitsAndBytesConfig`` arguments
  * ``lora``     -> ``peft.LoraConfig`` fields
  * ``sft``      -> ``trl.SFTConfig`` fields that ``TrainingArguments`` does not have
  * ``training`` -> ``transformers.TrainingArguments`` fields
Project sections (tasks, runs, method options) are checked against ``SCHEMA`` below.

The library check imports transformers, peft and trl (about 12 s on 2 cores), so each stage
checks only what it uses: data and evaluate stages check the project sections, and a train or
predict stage checks its own model's library sections too (``pipeline.make_run``) before any
work. ``python -m clinlm.params`` checks everything at once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

NUM = (int, float)
ANY = object


class ParamsError(ValueError):
    """A params.yaml problem; the message names the dotted key."""


# Project-level schema: key -> type (or nested dict). ``None`` in a tuple = nullable.
TASK_SCHEMA: dict[str, Any] = {
    "type": str,
    "download": dict,  # task-specific: validated by the task's download code
    "statements": dict,
    "split": {"test_size": NUM, "group_by_patient": bool},
    "format": {"eval_fraction": NUM},
    "prompt": {"system": str, "question": str},
    "answer": dict,  # regression answer range (min/max) for numeric decoding
    "images": {"width_px": int, "height_px": int},  # ECG paper PNGs (vascular_age)
}
METHOD_KEYS: dict[str, dict[str, Any]] = {
    "common": {"method": str, "description": str},
    "sft": {"base": str, "max_train_rows": (int, None), "bnb": "bnb", "lora": "lora",
            "sft": "sft", "training": "training", "predict": dict, "torch_threads": (int, None)},
    "head": {"base": str, "max_train_rows": (int, None), "bnb": "bnb", "lora": "lora",
             "training": "training", "predict": dict, "class_weights": (str, None),
             "torch_threads": (int, None)},
    "vlm": {"base": str, "max_train_rows": (int, None), "bnb": "bnb", "lora": "lora",
            "training": "training", "predict": dict, "torch_threads": (int, None),
            "image": {"augment": bool, "max_shift": NUM, "max_scale": NUM, "dir": (str, None)},
            "prompt_template": (str, None), "ecg_text": bool},
    "cohere": {"base_model": str, "model_id": (str, None), "base_url": (str, None),
               "requests_per_minute": NUM, "max_concurrency": int, "max_retries": int,
               "backoff_base_s": NUM, "backoff_max_s": NUM, "timeout_s": NUM,
               "few_shot_k": int, "poll_interval_s": NUM, "finetune_hyperparameters": dict,
               "temperature": NUM, "retry_failed": bool, "keep_partial": bool},
    "gbdt": {"hist_gbdt": dict},
}


# vision-language bases composed from a pretrained text model (clinlm.vlm_base.compose_idefics3)
VLM_BASE_SCHEMA: dict[str, Any] = {"architecture": str, "text_model": str, "vision_config": dict,
                                   "scale_factor": int, "dtype": str}


def all_runs(params: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``runs`` and ``vlm_runs`` together (names are unique across both)."""
    return {**params["runs"], **(params.get("vlm_runs") or {})}


def load_params(path: str | Path = "params.yaml",
                library_models: Iterable[str] | None = ()) -> dict[str, Any]:
    """Read and validate params.yaml; return it as a plain dict.

    ``library_models``: the models whose library sections (bnb, lora, sft, training) are also
    checked against the libraries; ``()`` none (no heavy imports), ``None`` all of them.

    Read as YAML 1.2, like DVC reads it: ``dvc exp run -S`` rewrites the file and drops
    quotes, and a bare ``save_strategy: no`` must stay the string "no" (YAML 1.1 -- PyYAML --
    would turn it into False).
    """
    from ruamel.yaml import YAML

    params = YAML(typ="safe", pure=True).load(Path(path).read_text())
    validate(params, library_models)
    return params


def validate(params: dict[str, Any], library_models: Iterable[str] | None = None) -> None:
    """Check every section; library sections only of ``library_models`` (``None``: all)."""
    check_libraries = None if library_models is None else set(library_models)
    for key in ("seed", "tasks", "models", "runs"):
        if key not in params:
            raise ParamsError(f"params.yaml: missing top-level key {key!r}")
    _check_type("seed", params["seed"], int)
    for name, task in params["tasks"].items():
        _check_section(f"tasks.{name}", task, TASK_SCHEMA)
    for name, model in params["models"].items():
        method = model.get("method")
        if method not in METHOD_KEYS or method == "common":
            raise ParamsError(f"models.{name}.method: unknown method {method!r}; "
                              f"known: {', '.join(k for k in METHOD_KEYS if k != 'common')}")
        allowed = {**METHOD_KEYS["common"], **METHOD_KEYS[method]}
        for key, value in model.items():
            if key not in allowed:
                raise ParamsError(f"models.{name}.{key}: unknown key for method {method!r}; "
                                  f"allowed: {', '.join(sorted(allowed))}")
            spec = allowed[key]
            if isinstance(spec, str):
                if check_libraries is None or name in check_libraries:
                    validate_library_section(f"models.{name}.{key}", spec, value)
            elif isinstance(spec, dict):
                _check_section(f"models.{name}.{key}", value, spec)
            else:
                _check_type(f"models.{name}.{key}", value, spec)
    for section in ("runs", "vlm_runs"):
        _check_type(section, params.get(section) or {}, dict)
        for run, spec in (params.get(section) or {}).items():
            _check_section(f"{section}.{run}", spec, {"task": str, "model": str})
            if spec.get("task") not in params["tasks"]:
                raise ParamsError(f"{section}.{run}.task: no task {spec.get('task')!r} in tasks")
            if spec.get("model") not in params["models"]:
                raise ParamsError(f"{section}.{run}.model: no model {spec.get('model')!r} in models")
            is_vlm = params["models"][spec["model"]].get("method") == "vlm"
            if is_vlm != (section == "vlm_runs"):
                raise ParamsError(f"{section}.{run}: method vlm runs belong in vlm_runs (their "
                                  "stages also depend on the ECG images), all others in runs")
    both = set(params["runs"]) & set(params.get("vlm_runs") or {})
    if both:
        raise ParamsError(f"vlm_runs: names also in runs: {sorted(both)}")
    for name, spec in (params.get("vlm_bases") or {}).items():
        _check_section(f"vlm_bases.{name}", spec, VLM_BASE_SCHEMA)
        if spec.get("text_model") not in (params.get("base_models") or {}):
            raise ParamsError(f"vlm_bases.{name}.text_model: no base_models entry "
                              f"{spec.get('text_model')!r}")


def _check_section(prefix: str, section: Any, schema: dict[str, Any]) -> None:
    if not isinstance(section, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(section).__name__}")
    for key, value in section.items():
        if key not in schema:
            raise ParamsError(f"{prefix}.{key}: unknown key; allowed: {', '.join(schema)}")
        spec = schema[key]
        if isinstance(spec, dict):
            _check_section(f"{prefix}.{key}", value, spec)
        else:
            _check_type(f"{prefix}.{key}", value, spec)


def _check_type(key: str, value: Any, spec: Any) -> None:
    types_ = spec if isinstance(spec, tuple) else (spec,)
    if value is None and None in types_:
        return
    real = tuple(t for t in types_ if isinstance(t, type))
    if isinstance(value, bool) and bool not in real:
        ok = False
    else:
        ok = isinstance(value, real)
    if not ok:
        want = " or ".join("null" if t is None else t.__name__ for t in types_)
        raise ParamsError(f"{key}: expected {want}, got {type(value).__name__} ({value!r})")


# ---- library sections: fields and their annotations come from the library classes ----

@functools.cache
def _library_fields(kind: str) -> dict[str, Any]:
    if kind == "bnb":
        from transformers import BitsAndBytesConfig
        sig = inspect.signature(BitsAndBytesConfig.__init__)
        return {n: p.annotation for n, p in sig.parameters.items()
                if n not in ("self", "kwargs")}
    if kind == "lora":
        from peft import LoraConfig
        return _dataclass_fields(LoraConfig)
    from transformers import TrainingArguments
    training = _dataclass_fields(TrainingArguments)
    if kind == "training":
        return training
    from trl import SFTConfig
    return {k: v for k, v in _dataclass_fields(SFTConfig).items() if k not in training}


def _dataclass_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def validate_library_section(prefix: str, kind: str, section: Any) -> None:
    """Check every key of a library section exists on the library class, with a fitting type."""
    if not isinstance(section, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(section).__name__}")
    fields = _library_fields(kind)
    for key, value in section.items():
        if key not in fields:
            close = [f for f in fields if key.lower() in f.lower() or f.lower() in key.lower()]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ParamsError(f"{prefix}.{key}: not a field of the library's {kind} config{hint}")
        if not _fits(value, fields[key]):
            raise ParamsError(f"{prefix}.{key}: value {value!r} ({type(value).__name__}) does not "
                              f"match the library's type {_type_name(fields[key])}")


def _fits(value: Any, ann: Any) -> bool:
    """Loose structural check of a YAML value against a type annotation."""
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if ann is type(None):
        return value is None
    if origin in (list, tuple, set, typing.Sequence) or ann in (list, tuple):
        return isinstance(value, list)
    if origin is dict or ann is dict:
        return isinstance(value, dict)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, NUM) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if isinstance(ann, type):
        if issubclass(ann, str) or getattr(ann, "__members__", None):  # enums: given by name
            return isinstance(value, str)
        return True  # torch.dtype and other objects: given as strings, converted by builders
    return True


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def run_spec(params: dict[str, Any], run: str) -> tuple[str, dict, str, dict]:
    """(task name, task section, model name, model section) for a ``runs``/``vlm_runs`` entry."""
    runs = all_runs(params)
    if run not in runs:
        raise ParamsError(f"runs.{run}: no such run in runs or vlm_runs; known: {', '.join(runs)}")
    spec = runs[run]
    return spec["task"], params["tasks"][spec["task"]], spec["model"], params["models"][spec["model"]]


if __name__ == "__main__":  # python -m clinlm.params [params.yaml]: check every section
    import sys

    load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml", library_models=None)
    print("params ok")
