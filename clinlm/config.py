"""Typed params sections: how a section is checked, and the sections of the pipeline itself.

Every params.yaml section has ONE typed model that holds its keys and defaults (pydantic,
unknown keys are errors). Each lives with the code it configures:

* pipeline-level sections (runs, base models, predict threshold): here;
* a task's sections (split, prompt, answer, ...): ``clinlm.tasks.TaskSection``, and its
  download/statements sections the task's own ``download_config`` / ``statements_config``;
* a model entry: its method's config class (the method class's ``config``, through
  ``clinlm.methods.model_config_class``), the LLM methods' shared keys in ``clinlm.llm.config``.

``clinlm.params`` validates params.yaml against them; a ``Run`` carries its model and task
sections as plain dicts with every default filled in, so code never needs ``.get(key, default)``.
Library sections (``bnb``, ``lora``, ``sft``, ``training``) stay dicts, checked field by field
against the libraries' own classes (``clinlm.params``): their defaults are the libraries'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def parse_section(model: type[C], section: Mapping[str, Any] | BaseModel | None,
                  where: str) -> C:
    """``section`` validated by ``model``; errors are ``ValueError`` naming ``where.key``.

    An unknown key reads ``<where>.<key>: unknown key; allowed: ...``, a value outside a
    literal ``<where>.<key>: <value> not one of ...``.
    """
    if isinstance(section, model):
        return section
    if isinstance(section, BaseModel):
        section = section.model_dump()
    try:
        return model.model_validate(dict(section or {}))
    except ValidationError as e:
        raise ValueError("\n".join(_message(model, err, where) for err in e.errors())) from None


def _message(model: type[BaseModel], err: Any, where: str) -> str:
    key = ".".join(str(p) for p in err["loc"])
    name = f"{where}.{key}" if key else where
    if err["type"] == "extra_forbidden":
        return f"{name}: unknown key; allowed: {', '.join(model.model_fields)}"
    if err["type"] == "literal_error":
        return f"{name}: {err['input']!r} not one of {err['ctx']['expected']}"
    if err["type"] == "value_error":  # our own validators name the value themselves
        return f"{name}: {str(err['msg']).removeprefix('Value error, ')}"
    return f"{name}: {err['msg']} (got {err.get('input')!r})"


LIBRARY_SECTIONS = {"bnb": "bnb", "lora": "lora", "sft": "sft", "training": "training",
                    "dynamo": "dynamo"}
"""Model keys whose values are checked against a library class (see ``clinlm.params``)."""


class ModelCommon(Strict):
    """Keys every ``models.<m>`` section has; each method's config class adds its own."""

    method: str                # which method trains it (clinlm.methods.REGISTRY)
    description: str = ""      # one line, shown in summaries and model cards


def import_object(registry: Mapping[str, str], name: str, what: str) -> Any:
    """``registry[name]`` (``"module:attribute"``) imported: registries name their entries as
    strings so that importing a registry imports none of them."""
    import importlib
    if name not in registry:
        raise KeyError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)


class VLMBaseConfig(Strict):
    """A vision-language base composed around a pretrained text model (``vlm_bases.<name>``)."""

    architecture: Literal["idefics3"] = "idefics3"  # the SmolVLM layout: ViT -> pixel shuffle -> tokens
    text_model: str                     # the base_models entry whose weights load exactly
    vision_config: dict[str, Any] = {}  # transformers Idefics3VisionConfig fields
    scale_factor: PositiveInt = 4       # pixel shuffle: image tokens = (image/patch)^2 / factor^2
    dtype: str = "float32"              # the composed folder's weights dtype


class BaseModelConfig(Strict):
    """``base_models.<name>``; ``revision`` / ``allow_patterns`` / ``ignore_patterns`` pin and
    filter a Hub download (``snapshot_download``'s own fields; an error for other sources)."""

    source: str              # embedded:smollm2 | a local folder | a Hub id (HF_TOKEN from the env)
    dtype: str = "float32"   # the materialized weights' dtype
    revision: str | None = None              # a commit sha (pinned), tag or branch; null: main
    allow_patterns: list[str] | None = None  # e.g. [config.json, "*.safetensors", "tokenizer*"]
    ignore_patterns: list[str] | None = None  # e.g. ["original/*"]: Llama's second copy


class RunSpec(Strict):
    """One run of ``runs.<method>``: a task and a model entry (+ what they load)."""

    task: str                # a tasks entry
    model: str               # a models entry of this group's method
    base: str | None = None  # LLM runs: the base_models / vlm_bases entry the model loads
    llm: str | None = None       # stack runs: the model of the task's LLM run it combines
    baseline: str | None = None  # stack runs: the model of the task's gbdt run it combines


class PredictStageConfig(Strict):
    """``predict``: the decision rule every classification run shares."""

    threshold: float = Field(0.5, ge=0, le=1)  # p_yes >= threshold -> "Yes"
