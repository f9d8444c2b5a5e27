"""dvc.yaml lists, for each stage, exactly the project code the stage runs.

The code a stage runs is found statically: its ``stages/<name>.py`` module (and, for the
``train_<method>`` / ``predict_<method>`` groups, ``clinlm/methods/<method>.py``), then every
``clinlm`` module imported anywhere in those files (function-level imports included),
recursively. Registries import by name (``"clinlm.noshow.task:NoshowTask"``): the task
stages (those that run a task's data code) list the task packages as folders, and what those
packages import is followed too; a method that holds members (the stack) runs the code of
every method its class says may be a member (``stack_role``). Not followed: ``clinlm.params`` (it only accepts or
refuses params.yaml; it changes no output).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

NOT_FOLLOWED = {"clinlm.params"}
NOT_FOLLOWED_FILES = {"clinlm/params.py"}


def _file(module: str) -> Path | None:
    for p in (ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__init__.py"):
        if p.exists():
            return p
    return None


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("clinlm", "stages"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "clinlm")
    return out


def code_closure(modules: list[str]) -> set[str]:
    """Repo-relative paths of every project file the modules import, transitively."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in NOT_FOLLOWED:
            continue
        path = _file(mod)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += sorted(_imports(path))
    return {str(p.relative_to(ROOT)) for p in seen}


#: the stages that run a task's own data code (through the task registry)
TASK_STAGES = {"inputs", "download", "statements", "render"}


def _registered_task_modules() -> list[str]:
    from clinlm.tasks import TASKS
    return [entry.split(":")[0] for entry in TASKS.values()]


def _member_modules(method: str) -> list[str]:
    """The modules of the methods a ``method`` run may hold as members (the stack's)."""
    from clinlm.methods import REGISTRY, method_class
    if not method_class(method).holds_members:
        return []
    return [REGISTRY[m].split(":")[0] for m in REGISTRY if method_class(m).stack_role]


def _stages() -> list[tuple[str, dict]]:
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items())


def _spec(stage: dict) -> dict:
    return stage.get("do", stage)


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name,stage", _stages(), ids=[n for n, _ in _stages()])
def test_stage_lists_exactly_the_code_it_runs(name, stage):
    spec = _spec(stage)
    module = re.search(r"python -m (stages\.\w+)", spec["cmd"]).group(1)
    start = [module]
    method = re.fullmatch(r"(?:train|predict)_(\w+)", name)
    if method:
        start.append(f"clinlm.methods.{method.group(1)}")
        start += _member_modules(method.group(1))
    if name in TASK_STAGES:
        start += [m for m in _registered_task_modules()
                  if name != "render" or m.startswith("clinlm.vascular")]
    need = code_closure(start) - NOT_FOLLOWED_FILES
    code_deps = [d for d in spec["deps"] if d.startswith(("clinlm", "stages"))]
    missing = sorted(p for p in need if not _covered(p, code_deps))
    extra = sorted(d for d in code_deps if d.endswith(".py") and d not in need)
    assert not missing, f"{name}: dvc.yaml misses code the stage runs: {missing}"
    assert not extra, f"{name}: dvc.yaml lists code the stage never imports: {extra}"


def test_llm_runs_depend_on_their_own_base_only():
    stages = dict(_stages())
    for method in ("sft", "head", "vlm"):
        for kind in ("train", "predict"):
            deps = _spec(stages[f"{kind}_{method}"])["deps"]
            assert "data/models/base/${item.base}" in deps
            assert not any(d.startswith("data/models/base/") and "${" not in d for d in deps)
    for method in ("gbdt", "cohere"):
        for kind in ("train", "predict"):
            assert not any("models/base" in d for d in _spec(stages[f"{kind}_{method}"])["deps"])


def test_every_method_has_its_stage_group():
    from clinlm.methods import method_names
    stages = dict(_stages())
    for method in method_names():
        for kind in ("train", "predict", "evaluate"):
            assert _spec(stages[f"{kind}_{method}"])["cmd"].startswith("python -m stages.")
            assert stages[f"{kind}_{method}"]["foreach"] == f"${{runs.{method}}}"
