"""ARCHITECTURE.md is the one map of the code: it must not drift from the tree.

Three checks, each of which fails on a real drift: a module without a row in the Files table,
a path the page names that does not exist, and a symbol named beside a file that the file does
not define.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = (ROOT / "ARCHITECTURE.md").read_text()

#: a backticked repository path: a known top-level folder, or a file with a known suffix
_PATH = re.compile(r"`((?:clinlm|stages|tests|bench|configs|docs)/[^`\s]*|[\w./-]+\.(?:py|md|yaml|json|html))`")
#: `path.py` (`name`, `name2`, ...): the names a row says live in that file
_SYMBOLS = re.compile(r"`([\w/]+\.py)` \(([^)]*)\)")


def _named_paths() -> set[str]:
    out = set()
    for p in _PATH.findall(ARCH):
        if any(c in p for c in "*<>{}") or p.startswith(("data/", "metrics/")):
            continue  # patterns and DVC outputs (not in git)
        out.add(p.rstrip("/"))
    return out


def test_every_module_has_a_row():
    files_section = ARCH.split("## Files", 1)[1]
    listed = set(re.findall(r"^\| `([^`]+\.py)` \|", files_section, flags=re.M))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clinlm").rglob("*.py")}
    assert modules - listed == set(), "modules without a row in ARCHITECTURE.md's Files table"
    assert listed - modules == set(), "rows of ARCHITECTURE.md's Files table with no module"


def test_every_named_path_exists():
    missing = sorted(p for p in _named_paths()
                     if not (ROOT / p).exists() and not (ROOT / "clinlm" / p).exists())
    assert missing == [], f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_named_symbol_is_in_its_file():
    missing = []
    for path, inner in _SYMBOLS.findall(ARCH):
        file = ROOT / path if (ROOT / path).exists() else ROOT / "clinlm" / path
        if not file.exists():
            continue  # reported by test_every_named_path_exists
        text = file.read_text()
        for sym in re.findall(r"`([A-Za-z_][\w.]*)`", inner):
            name = sym.split(".")[-1]
            if not re.search(rf"\b{re.escape(name)}\b", text):
                missing.append(f"{path}: {sym}")
    assert missing == [], f"ARCHITECTURE.md names symbols its files lack: {missing}"
