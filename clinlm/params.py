"""Load ``params.yaml`` and validate it: an unknown key or a wrong type stops with its name.

Library sections are checked against the library itself, so params keys are named exactly
like the fields they feed:
  * ``bnb``      -> ``transformers.BitsAndBytesConfig`` arguments
  * ``lora``     -> ``peft.LoraConfig`` fields
  * ``sft``      -> ``trl.SFTConfig`` fields that ``TrainingArguments`` does not have
  * ``training`` -> ``transformers.TrainingArguments`` fields
Project sections (tasks, runs, method options) are checked against their typed configs in
:mod:`clinlm.config` (the one home of their defaults) and the tasks' own download/statements
configs (:mod:`clinlm.tasks`).

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


class ParamsError(ValueError):
    """A params.yaml problem; the message names the dotted key."""


def all_runs(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every run of every ``runs.<method>`` group, flat: ``{name: {task, model, method, base}}``."""
    out: dict[str, dict[str, Any]] = {}
    for method, group in (params.get("runs") or {}).items():
        for name, spec in (group or {}).items():
            out[name] = {"base": None, **spec, "method": method}
    return out


def load_params(path: str | Path = "params.yaml",
                library_models: Iterable[str] | None = ()) -> dict[str, Any]:
    """Read and validate params.yaml; return it as a plain dict (as written, no defaults added).

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


def _parse(model: Any, section: Any, where: str) -> Any:
    from clinlm.config import parse_section
    try:
        return parse_section(model, section, where)
    except ValueError as e:
        raise ParamsError(str(e)) from None


def validate(params: dict[str, Any], library_models: Iterable[str] | None = None) -> None:
    """Check every section against its typed config (:mod:`clinlm.config`, the tasks' own
    download/statements configs); library sections only of ``library_models`` (``None``: all)."""
    from clinlm import config as C
    from clinlm.methods import method_class, method_names
    from clinlm.tasks import TaskSection, get_task, task_kind

    check_libraries = None if library_models is None else set(library_models)
    for key in ("seed", "tasks", "models", "runs"):
        if key not in params:
            raise ParamsError(f"params.yaml: missing top-level key {key!r}")
    _check_type("seed", params["seed"], int)
    _parse(C.PredictStageConfig, params.get("predict"), "predict")
    for name, spec in (params.get("base_models") or {}).items():
        _parse(C.BaseModelConfig, spec, f"base_models.{name}")
    for name, task in params["tasks"].items():
        try:
            task_kind(name, task)
        except ValueError as e:
            raise ParamsError(str(e)) from None
        _parse(TaskSection, task, f"tasks.{name}")
        t = get_task(name, task)
        if task["type"] not in t.task_types:
            raise ParamsError(f"tasks.{name}.type: {task['type']!r}, but this task's data is "
                              f"{' or '.join(t.task_types)}")
        if (task.get("answer") or {}).get("labels") is not None and task["type"] != "multiclass":
            raise ParamsError(f"tasks.{name}.answer.labels: only a multiclass task has labels "
                              f"(this one is {task['type']})")
        _parse(t.download_config, task.get("download"), f"tasks.{name}.download")
        _parse(t.statements_config, task.get("statements"), f"tasks.{name}.statements")
        try:
            t.check_section(task)
        except ValueError as e:
            raise ParamsError(str(e)) from None
    for name, model in params["models"].items():
        method = model.get("method") if isinstance(model, dict) else None
        if method not in method_names():
            raise ParamsError(f"models.{name}.method: unknown method {method!r}; "
                              f"known: {', '.join(method_names())}")
        cls = method_class(method)
        _parse(cls.config, model, f"models.{name}")
        if check_libraries is None or name in check_libraries:
            for key, kind in C.LIBRARY_SECTIONS.items():
                if model.get(key) is not None:
                    validate_library_section(f"models.{name}.{key}", kind, model[key])
            if cls.llm:
                from clinlm.llm.validation import check_evaluation_keys
                try:
                    check_evaluation_keys(model, f"models.{name}")
                except ValueError as e:
                    raise ParamsError(str(e)) from None
    _check_type("runs", params["runs"], dict)
    seen: dict[str, str] = {}
    for method, group in params["runs"].items():
        if method not in method_names():
            raise ParamsError(f"runs.{method}: runs are grouped by method; known: "
                              f"{', '.join(method_names())}")
        cls = method_class(method)
        _check_type(f"runs.{method}", group or {}, dict)
        for run, spec in (group or {}).items():
            where = f"runs.{method}.{run}"
            if run in seen:
                raise ParamsError(f"{where}: the run name is also in runs.{seen[run]}")
            seen[run] = method
            _parse(C.RunSpec, spec, where)
            if spec["task"] not in params["tasks"]:
                raise ParamsError(f"{where}.task: no task {spec['task']!r} in tasks")
            if spec["model"] not in params["models"]:
                raise ParamsError(f"{where}.model: no model {spec['model']!r} in models")
            model = params["models"][spec["model"]]
            if model["method"] != method:
                raise ParamsError(f"{where}: model {spec['model']!r} is method "
                                  f"{model['method']!r}; put the run in runs.{model['method']}")
            _check_run_base(params, where, spec, model, llm=cls.llm)
            task_type = params["tasks"][spec["task"]]["type"]
            if cls.table_refusal and (params["tasks"][spec["task"]] or {}).get("kind") == "table":
                raise ParamsError(f"{where}: the {method} method {cls.table_refusal}, and task "
                                  f"{spec['task']!r} (kind: table) has none; use sft or head")
            if task_type not in cls.task_types:
                raise ParamsError(f"{where}: the {method} method answers "
                                  f"{' or '.join(cls.task_types)}; task {spec['task']!r} is "
                                  f"{task_type}")
            if cls.llm:
                from clinlm.llm.validation import check_metric
                try:
                    check_metric((model.get("training") or {}).get("metric_for_best_model"),
                                 params["tasks"][spec["task"]]["type"],
                                 f"models.{spec['model']}.training (run {run})")
                except ValueError as e:
                    raise ParamsError(str(e)) from None
    for name, spec in (params.get("vlm_bases") or {}).items():
        _parse(C.VLMBaseConfig, spec, f"vlm_bases.{name}")
        if spec.get("text_model") not in (params.get("base_models") or {}):
            raise ParamsError(f"vlm_bases.{name}.text_model: no base_models entry "
                              f"{spec.get('text_model')!r}")


def _check_run_base(params: dict[str, Any], where: str, spec: dict[str, Any],
                    model: dict[str, Any], llm: bool) -> None:
    """An LLM run names the materialized folder its model loads (a stage dependency)."""
    base = spec.get("base")
    if not llm:
        if base is not None:
            raise ParamsError(f"{where}.base: only LLM runs load a base model")
        return
    local = {**(params.get("base_models") or {}), **(params.get("vlm_bases") or {})}
    if base not in local:
        raise ParamsError(
            f"{where}.base: name the base_models / vlm_bases entry the model loads "
            f"(known: {', '.join(local)}); for a Hub model add a base_models entry with "
            f"source: <hub id> (materialized once, then cached and pushable by DVC)")
    if str(model["base"]).rstrip("/") != f"data/models/base/{base}":
        raise ParamsError(f"{where}.base: {base!r} but models.{spec['model']}.base is "
                          f"{model['base']!r} (expected data/models/base/{base})")


def _check_type(key: str, value: Any, spec: Any) -> None:
    types_ = spec if isinstance(spec, tuple) else (spec,)
    ok = isinstance(value, types_) and not (isinstance(value, bool) and bool not in types_)
    if not ok:
        want = " or ".join(t.__name__ for t in types_)
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
    if kind == "dynamo":  # backend and mode are TrainingArguments' torch_compile_backend / _mode
        from accelerate.utils import TorchDynamoPlugin
        return {k: v for k, v in _dataclass_fields(TorchDynamoPlugin).items()
                if k not in ("backend", "mode")}
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
        if (kind, key) in PROJECT_OWNED:
            raise ParamsError(f"{prefix}.{key}: {PROJECT_OWNED[kind, key]}")
        if (kind, key) == ("training", "resume_from_checkpoint") and isinstance(value, bool):
            continue  # true: the run's last checkpoint (clinlm.llm.fit.resume_checkpoint)
        if key not in fields:
            close = [f for f in fields if key.lower() in f.lower() or f.lower() in key.lower()]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            if kind == "dynamo":
                hint += (" (accelerate's TorchDynamoPlugin; backend and mode are "
                         "training.torch_compile_backend / _mode)")
            raise ParamsError(f"{prefix}.{key}: not a field of the library's {kind} config{hint}")
        if value == "auto" and (kind, key) in AUTO_PRECISION:
            continue  # resolved to this machine's precision at run time (clinlm.llm.precision)
        if value == "auto" and (kind, key) == ("training", "torch_compile"):
            continue  # resolved by the run's length and the machine (clinlm.llm.compile.resolve_compile)
        if not _fits(value, fields[key]) or (value == "auto" and kind == "bnb"):
            hint = (f"; `auto` precision is accepted only for "
                    f"{', '.join(f'{k}.{f}' for k, f in AUTO_PRECISION)} (and the model's "
                    f"dtype / predict.autocast_dtype)") if value == "auto" else ""
            raise ParamsError(f"{prefix}.{key}: value {value!r} ({type(value).__name__}) does not "
                              f"match the library's type {_type_name(fields[key])}{hint}")
        low, high, closed = RANGES.get((kind, key), (None, None, True))
        if isinstance(value, NUM) and not isinstance(value, bool) and not (
                (low is None or value > low or (closed and value == low))
                and (high is None or value < high)):
            want = " and ".join(w for w in (
                None if low is None else f"{'>=' if closed else '>'} {low}",
                None if high is None else f"< {high}") if w)
            raise ParamsError(f"{prefix}.{key}: {value!r} is out of range (needs {want})")


# library keys that may say `auto` (bf16 where this machine computes it fast, else fp32): the
# project resolves them before the library sees them (clinlm.llm.precision.AUTO_KEYS; a
# model's own `dtype` and `predict.autocast_dtype` are checked by clinlm.llm.config)
AUTO_PRECISION: tuple[tuple[str, str], ...] = (("bnb", "bnb_4bit_compute_dtype"),
                                               ("training", "bf16"))

# library fields the project sets itself: a value in params would be overwritten, so it is an
# error that says where the setting lives instead
PROJECT_OWNED: dict[tuple[str, str], str] = {
    ("training", "output_dir"): "set by the project: checkpoints go to "
    "data/work/<task>/<model>/checkpoints (clinlm.paths.work_dir; outside the DVC outputs, kept "
    "until the run succeeds), the trained model to data/models/<task>/<model>; remove the key",
    ("training", "seed"): "set by the project from the top-level `seed` of params.yaml (one seed "
    "for the split, the subsample and training); change that one, or remove the key",
}

# Values the libraries accept and then fail on, or silently misuse, minutes into a run:
# (section kind, key) -> (lower bound, upper bound (exclusive), lower bound allowed)
RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("training", "learning_rate"): (0, None, False),
    ("training", "num_train_epochs"): (0, None, False),
    ("training", "per_device_train_batch_size"): (1, None, True),
    ("training", "gradient_accumulation_steps"): (1, None, True),
    ("training", "weight_decay"): (0, None, True),
    ("training", "warmup_ratio"): (0, 1, True),
    ("training", "max_grad_norm"): (0, None, True),
    ("lora", "r"): (1, None, True),
    ("lora", "lora_alpha"): (0, None, False),
    ("lora", "lora_dropout"): (0, 1, True),
    ("sft", "max_length"): (1, None, True),
}


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
    """(task name, task section, model name, model section) of a run in any ``runs`` group."""
    runs = all_runs(params)
    if run not in runs:
        raise ParamsError(f"runs: no run {run!r} in any group; known: {', '.join(runs)}")
    spec = runs[run]
    return spec["task"], params["tasks"][spec["task"]], spec["model"], params["models"][spec["model"]]


def preflight(params: dict[str, Any]) -> None:
    """Check every run's method can work (API keys present, ...) before the first stage.

    Only the runs whose method has something to check (its class overrides ``check_ready``)
    are made: making every run would import the model libraries to check each LLM section
    in a data stage. A run that holds members (the stack) is checked by its own stages."""
    from clinlm.methods import Method, method_class
    from clinlm.runs import make_run
    for name, spec in all_runs(params).items():
        cls = method_class(spec["method"])
        if cls.check_ready is Method.check_ready or cls.holds_members:
            continue
        run = make_run(name, params)
        cls().check_ready(run)


if __name__ == "__main__":  # python -m clinlm.params [params.yaml]: check every section
    import sys

    load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml", library_models=None)
    print("params ok")
