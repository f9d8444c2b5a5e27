"""`dvc plots` shows every run, and its HTML opens offline.

The project promises to run offline; dvc-render's default page loads Vega from a CDN, so
.dvc/config points `plots.html_template` at a page with Vega inlined
(configs/plots/offline.html).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]

#: the plot files each task's evaluate stage writes, per model
TASK_PLOTS = {"classification": ("roc.json", "pr.json", "calibration.json"),
              "multiclass": ("confusion.json",),
              "regression": ("scatter.json", "bland_altman.json")}
#: what loads something from elsewhere: script/img/iframe src, stylesheet links, CSS imports
_LOADS = re.compile(r"""<(?:script|img|iframe)[^>]*\ssrc\s*=\s*["']?https?:|<link[^>]*href\s*=\s*["']?https?:|@import\s+url\(\s*["']?https?:""",
                    re.I)


def _plotted() -> set[str]:
    plotted = set()
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        for spec in entry.values():
            y = spec.get("y") if isinstance(spec, dict) else None
            plotted |= set(y) if isinstance(y, dict) else set()
    return plotted


def test_every_run_is_plotted():
    """Each run in params has each of its task's evaluation plots, and each LLM run its
    training loss curve, in dvc.yaml's top-level `plots:`."""
    from clinlm.methods import method_class
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    plotted = _plotted()
    missing = []
    for method, runs in params["runs"].items():
        for item in (runs or {}).values():
            task = params["tasks"][item["task"]]
            files = [f"metrics/{item['task']}/plots/{item['model']}/{f}"
                     for f in TASK_PLOTS[task["type"]]]
            if method_class(method).llm:
                files.append(f"metrics/{item['task']}/train/{item['model']}/plots/metrics/loss.tsv")
            missing += [f for f in files if f not in plotted]
    assert missing == [], f"runs in params.yaml missing from dvc.yaml's plots: {missing}"


def test_the_template_loads_nothing_from_the_network():
    cfg = (ROOT / ".dvc" / "config").read_text()
    assert "html_template = ../configs/plots/offline.html" in cfg
    page = (ROOT / "configs" / "plots" / "offline.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # dvc-render puts the CDN tags there
    assert "vega-embed" in page and not _LOADS.search(page)


def test_dvc_plots_show_writes_an_offline_page(tmp_path):
    """The real `dvc plots show` on the committed plot data, with the project's config."""
    out = tmp_path / "plots"
    subprocess.run([*DVC, "plots", "show", "-o", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    html = (out / "index.html").read_text()
    assert "vegaEmbed" in html and "ROC (noshow)" in html
    assert "cdn.jsdelivr" not in html and not _LOADS.search(html)
