"""The package declares what it imports: `pip install .` must give a working `clinlm`.

`.ci/run` installs the checkout into a bare virtualenv and runs `clinlm ask --help`; this test
is the fast, static half: every third-party module that `clinlm/` imports belongs to a
distribution that pyproject.toml declares (core, or the extra that names it), and the lock
files keep the dev tools out of the runtime lock.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: modules that only an optional path imports, and the extra that declares them
OPTIONAL = {"fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "httpx": "serve",
            "cohere": "cohere", "vllm": "gpu", "deepspeed": "gpu"}


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.lower().replace("_", "-")


def _imports() -> set[str]:
    """Top-level modules imported anywhere in clinlm/ (function-level imports included)."""
    out: set[str] = set()
    for f in (ROOT / "clinlm").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"clinlm", "__future__"}


def test_every_import_is_declared():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in PYPROJECT["optional-dependencies"].items()}
    dists = packages_distributions()
    missing = []
    for mod in sorted(_imports()):
        if mod == "kagglesdk":  # kagglehub's own dependency, imported for its error type
            continue
        names = {_name(d) for d in dists.get(mod, [])} or {mod.replace("_", "-")}
        where = extras.get(OPTIONAL[mod], set()) if mod in OPTIONAL else core
        if not names & where:
            missing.append(f"{mod} (distribution {sorted(names)})")
    assert missing == [], f"imported by clinlm/ but not declared in pyproject.toml: {missing}"


def test_command_and_dev_lock():
    assert PYPROJECT["scripts"]["clinlm"] == "clinlm.__main__:main"
    runtime = {_name(x) for x in (ROOT / "requirements.txt").read_text().splitlines()
               if x and not x.startswith("#")}
    dev = {_name(x) for x in (ROOT / "requirements-dev.txt").read_text().splitlines()
           if x and not x.startswith("#")}
    assert {"pytest", "ruff", "selenium"} <= dev
    assert not runtime & {"pytest", "ruff", "selenium", "trio"}, "dev tools in the runtime lock"
    assert not runtime & dev


@pytest.mark.parametrize("argv", [["--help"], ["ask", "--help"]])
def test_the_entry_point_answers_help(argv, capsys):
    """What the `clinlm` script runs (`clinlm.__main__:main`) answers --help without a model."""
    from clinlm.__main__ import main
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits on --help
        code = e.code
    assert code == 0
    assert "ask" in capsys.readouterr().out
