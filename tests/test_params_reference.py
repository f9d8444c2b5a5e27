"""docs/params_reference.md is generated from the typed configs and kept current (issue 29):
every project section is on it, every key has a meaning, and the page equals a fresh render."""

from __future__ import annotations

import re

from clinlm import paramsdoc
from tests.conftest import ROOT


def test_page_is_current():
    page = (ROOT / paramsdoc.PAGE).read_text()
    assert page == paramsdoc.render(), "run `python -m clinlm.paramsdoc` and commit the page"


def test_every_section_is_listed():
    from clinlm.tasks import TASKS
    listed = {path for _, path in paramsdoc.SECTIONS}
    from clinlm.methods import method_class, method_names
    configs = {method_class(m).config for m in method_names()}
    assert {f"{c.__module__}:{c.__name__}" for c in configs} <= listed
    from clinlm.tasks import GENERIC_KINDS, get_task
    for kind in TASKS:
        task = get_task("t", {"kind": kind}) if kind in GENERIC_KINDS else get_task(kind)
        for model in (task.download_config, task.statements_config):
            assert f"{model.__module__}:{model.__name__}" in listed, model


def test_every_key_has_a_meaning():
    blank = [line.split("|")[1].strip() for line in paramsdoc.render().splitlines()
             if re.match(r"\| `\w+` \|", line) and line.rstrip().endswith("|  |")]
    assert not blank, f"keys without a description or comment in their config class: {blank}"
