"""The serve page in real headless Chromium (Debian's chromium + chromedriver, Selenium).

The project is made by the pipeline's own stages (download, statements, split, train,
predict, evaluate, compare) for three gbdt runs (no-show, vascular age, and a multiclass
table: a heart rhythm of three labels), so the page has a training split for the
base rate and a ``reports/summary.json`` with bootstrap intervals. Checks what a clinician
sees: the "not a medical device" notice, fields that start empty with the examples as
placeholders and readable labels, an answer with the base rate, the test metric and its 95 %
interval and the threshold's meaning beside it, empty optional fields said as "not recorded"
in the statement, and a required field left empty refused by name.
Skips, saying why, when chromium or its driver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import contextlib
import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, rhythm_frame, rhythm_task
from tests.serve_project import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
RUNS = {"noshow-gbdt": "noshow", "vascular-gbdt": "vascular_age", "rhythm-gbdt": "rhythm"}

pytestmark = [pytest.mark.skipif(
    not (CHROMIUM and Path(DRIVER).exists()),
    reason="needs Debian's chromium + chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run does it)"),
    pytest.mark.slow]  # the project's stages and a server: ~30 s on 2 idle cores

NOSHOW_REQUIRED = {"Gender": "F", "Age": "45", "ScheduledDay": "2016-04-25",
                   "AppointmentDay": "2016-05-02", "Neighbourhood": "JARDIM CAMBURI"}


def _stage(module: str, *argv: str) -> None:
    """One pipeline stage in this process (``python -m stages.<module> ...`` without the
    interpreter start-up): the stages are ``__main__`` scripts."""
    old = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(f"stages.{module}", run_name="__main__")
    finally:
        sys.argv = old


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A small project through the real stages for the gbdt runs of both tasks."""
    root = tmp_path_factory.mktemp("page_project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"]["noshow"]["download"].update(source="synthetic", n_synthetic=400)
    params["tasks"]["vascular_age"]["download"].update(source="synthetic", n_synthetic=60)
    rhythm_frame(150).to_csv(root / "rhythm.csv", index=False)
    params["tasks"]["rhythm"] = rhythm_task("rhythm.csv")
    params["models"] = {"gbdt": {**params["models"]["gbdt"],
                                 "hist_gbdt": {"max_iter": 30, "min_samples_leaf": 5}}}
    params["runs"] = {**{method: {} for method in params["runs"]},
                      "gbdt": {run: {"task": task, "model": "gbdt"}
                               for run, task in RUNS.items()}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with contextlib.chdir(root):
        for task in RUNS.values():
            for stage in ("download", "statements", "split"):
                _stage(stage, "--task", task)
        for run in RUNS:
            for stage in ("train", "predict", "evaluate"):
                _stage(stage, run)
        _stage("compare")
    return root


@pytest.fixture(scope="module")
def server(project):
    with running_server(project, list(RUNS)) as (url, log):
        yield url
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def page(server):
    pytest.importorskip("selenium", reason="selenium (requirements.txt) not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(server + "/")
        yield driver
    finally:
        driver.quit()


def wait_for(driver, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def fill(driver, run: str, name: str, value: str) -> None:
    """Type into a text/number box, or pick a select's option by its value."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    el = driver.find_element(By.ID, f"{run}--{name}")
    if el.tag_name == "select":
        Select(el).select_by_value(value)
        return
    el.clear()
    if value:
        el.send_keys(value)


def clear_form(driver, run: str) -> None:
    driver.execute_script(
        "for (const el of document.querySelectorAll(arguments[0])) el.value = '';",
        f"#run-{run} input, #run-{run} select")


def ask(driver, run: str) -> None:
    from selenium.webdriver.common.by import By
    card = wait_for(driver, f"#run-{run} form")
    # the previous answer/error goes away when the new one arrives
    driver.execute_script("arguments[0].replaceChildren()",
                          driver.find_element(By.CSS_SELECTOR, f"#run-{run} .out"))
    card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def summary(project: Path, run: str) -> dict:
    return json.loads((project / "reports" / "summary.json").read_text())[RUNS[run]]["gbdt"]


def test_api_runs_says_what_an_answer_is_worth(server, project):
    """The same facts for an API client: notice, base rate, metric with interval, decision."""
    import urllib.request

    from clinlm.runinfo import NOTICE
    with urllib.request.urlopen(server + "/api/runs", timeout=10) as r:
        runs = {d["run"]: d for d in json.load(r)["runs"]}
    for run in RUNS:
        d, m = runs[run], summary(project, run)
        key = d["metric"]["name"]
        assert d["notice"] == NOTICE
        assert d["metric"]["value"] == pytest.approx(m[key])
        assert d["metric"]["ci95"] == pytest.approx(m["ci95"][key])
        assert d["base_rate"]["n_train"] == json.loads(
            (project / "data/processed" / RUNS[run] / "split.json").read_text())["n_train"]
        assert all(f["label"] for f in d["fields"])
    assert runs["noshow-gbdt"]["decision"]["threshold"] == 0.5


def test_notice_is_visible(page):
    notice = wait_for(page, "#notice")
    assert "Research use only" in notice.text and "not a medical device" in notice.text
    assert notice.rect["y"] < 200 and notice.rect["height"] > 10  # at the top, not hidden


@pytest.mark.parametrize("run", list(RUNS))
def test_fields_start_empty_with_examples_as_placeholders(page, run):
    from selenium.webdriver.common.by import By
    wait_for(page, f"#run-{run} form")
    boxes = page.find_elements(By.CSS_SELECTOR, f"#run-{run} input")
    selects = page.find_elements(By.CSS_SELECTOR, f"#run-{run} select")
    assert boxes and selects
    assert all(b.get_attribute("value") == "" for b in boxes + selects)
    assert not page.find_elements(By.CSS_SELECTOR, f"#run-{run} input[type=checkbox]")
    with_example = [b for b in boxes if b.get_attribute("data-example")]
    assert with_example
    for b in with_example:
        assert b.get_attribute("placeholder") == f"e.g. {b.get_attribute('data-example')}"


def test_labels_are_readable(page):
    from selenium.webdriver.common.by import By
    wait_for(page, "#run-vascular-gbdt form")
    labels = {el.get_attribute("for"): el.find_element(By.CSS_SELECTOR, ".name").text
              for el in page.find_elements(By.CSS_SELECTOR, "label")}
    assert labels["noshow-gbdt--Hipertension"] == "Hypertension"
    assert labels["noshow-gbdt--Age"].startswith("Age (years)")
    assert labels["noshow-gbdt--SMS_received"] == "SMS reminder sent"
    assert labels["vascular-gbdt--sbp_mmhg"] == "Systolic blood pressure (mmHg)"
    assert labels["vascular-gbdt--qtc_ms"] == "QTc (corrected QT) (ms)"
    text = " ".join(labels.values())
    for raw in ("Hipertension", "Handcap", "sbp_mmhg", "qtc_ms", "SMS_received"):
        assert raw not in text


def test_regression_answer_with_base_rate_metric_interval_and_unrecorded(page, project):
    run = "vascular-gbdt"
    wait_for(page, f"#run-{run} form")
    clear_form(page, run)
    fill(page, run, "age", "47")
    fill(page, run, "sex", "F")
    ask(page, run)
    box = wait_for(page, f"#run-{run} .answer")
    a = json.loads(box.get_attribute("data-answer"))
    assert f"{a['y_pred']:.1f}" in box.text and "90 % interval" in box.text
    # the statement: what was given, and what nobody entered said as such
    assert "A 47-year-old woman." in a["statement"]
    assert "Not recorded:" in a["statement"] and "total cholesterol" in a["statement"]
    assert "ECG" in a["statement"] and "Statement the model saw" in box.text
    # what the answer is worth, from the training split and reports/summary.json
    import pandas as pd
    train = pd.read_parquet(project / "data/processed/vascular_age/train.parquet")["label"]
    base = box.find_element("css selector", ".base-rate").text
    assert f"training mean {train.mean():.1f}" in base
    m = summary(project, run)
    metric = box.find_element("css selector", ".metric").text
    assert f"MAE {m['mae']:.2f}" in metric
    assert f"95 % CI {m['ci95']['mae'][0]:.2f} to {m['ci95']['mae'][1]:.2f}" in metric
    decision = box.find_element("css selector", ".decision").text
    assert f"{100 * m['coverage_90']:.1f} % of test cases" in decision
    assert "not a medical device" in box.text


def test_classification_answer_with_base_rate_metric_threshold(page, project, tmp_path):
    run = "noshow-gbdt"
    wait_for(page, f"#run-{run} form")
    clear_form(page, run)
    for name, value in NOSHOW_REQUIRED.items():
        fill(page, run, name, value)
    fill(page, run, "Hipertension", "1")  # the other flags left empty
    ask(page, run)
    box = wait_for(page, f"#run-{run} .answer")
    a = json.loads(box.get_attribute("data-answer"))
    assert 0 <= a["p_yes"] <= 1 and a["prediction"] in ("Yes", "No")
    assert box.text.splitlines()[0] == a["prediction"]
    assert f"probability of Yes: {a['p_yes']:.3f}" in box.text
    assert "hypertension; diabetes and alcoholism not recorded" in a["statement"]
    assert "SMS reminder not recorded." in a["statement"]
    assert "(booking time not recorded)" in a["statement"]  # a day without its time
    import pandas as pd
    train = pd.read_parquet(project / "data/processed/noshow/train.parquet")["label"]
    share = f"{100 * (train == 'Yes').mean():.1f} %"
    assert f"base rate {share}" in box.text
    assert box.find_element("css selector", ".base-rate").text.startswith(f"Base rate {share}")
    m = summary(project, run)
    metric = box.find_element("css selector", ".metric").text
    lo, hi = m["ci95"]["roc_auc"]
    assert f"ROC-AUC {m['roc_auc']:.3f} (95 % CI {lo:.3f} to {hi:.3f})" in metric
    cm = m["confusion_matrix"]
    flagged = 100 * (cm["tp"] + cm["fp"]) / m["n_test"]
    decision = box.find_element("css selector", ".decision").text
    assert "Yes when the predicted probability ≥ 0.5" in decision
    assert f"{flagged:.1f} % of test cases were flagged" in decision
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": page.execute_script(
            "return document.documentElement.scrollHeight") + 20,
        "deviceScaleFactor": 1, "mobile": False})
    assert page.save_screenshot(str(tmp_path / "page.png"))


def test_multiclass_answer_with_every_label_and_its_worth(page, project):
    """A three-label run: the most probable label, every label's probability (most likely
    first), the labels' shares in training, the accuracy with its interval, and what the
    decision is (no threshold: the most probable label)."""
    from selenium.webdriver.common.by import By
    run = "rhythm-gbdt"
    wait_for(page, f"#run-{run} form")
    clear_form(page, run)
    fill(page, run, "heart_rate", "150")
    fill(page, run, "rr_sd_ms", "25")
    fill(page, run, "p_wave", "absent")
    ask(page, run)
    box = wait_for(page, f"#run-{run} .answer")
    a = json.loads(box.get_attribute("data-answer"))
    assert a["prediction"] in ("SR", "AF", "AFL") and box.text.splitlines()[0] == a["prediction"]
    assert sum(a["probabilities"].values()) == pytest.approx(1.0)
    items = [li.text for li in box.find_elements(By.CSS_SELECTOR, ".probabilities li")]
    ranked = sorted(a["probabilities"].items(), key=lambda kv: -kv[1])
    assert [t.split(":")[0] for t in items] == [k for k, _ in ranked]
    assert items[0].startswith(f"{ranked[0][0]}: {ranked[0][1]:.3f}")
    assert "training cases" in box.find_element(By.CSS_SELECTOR, ".base-rate").text
    m = summary(project, run)
    lo, hi = m["ci95"]["accuracy"]
    metric = box.find_element(By.CSS_SELECTOR, ".metric").text
    assert f"accuracy {m['accuracy']:.3f} (95 % CI {lo:.3f} to {hi:.3f})" in metric
    decision = box.find_element(By.CSS_SELECTOR, ".decision").text
    assert "the most probable label is the answer" in decision


@pytest.mark.parametrize("missing", ["Age", "Gender"])
def test_required_field_left_empty_is_refused_by_name(page, missing):
    from selenium.webdriver.common.by import By
    run = "noshow-gbdt"
    wait_for(page, f"#run-{run} form")
    clear_form(page, run)
    for name, value in NOSHOW_REQUIRED.items():
        if name != missing:
            fill(page, run, name, value)
    ask(page, run)
    err = wait_for(page, f"#run-{run} .error")
    label = {"Age": "Age", "Gender": "Sex"}[missing]
    assert f"missing required field: {label}" in err.text
    assert "bad" in page.find_element(By.ID, f"{run}--{missing}").get_attribute("class")
    assert not page.find_elements(By.CSS_SELECTOR, f"#run-{run} .answer")


def test_impossible_value_is_refused_by_name(page):
    """Refused in place, whether the server answers 422 or a per-row refusal."""
    from selenium.webdriver.common.by import By
    run = "noshow-gbdt"
    wait_for(page, f"#run-{run} form")
    clear_form(page, run)
    for name, value in {**NOSHOW_REQUIRED, "Age": "200"}.items():
        fill(page, run, name, value)
    ask(page, run)
    err = wait_for(page, f"#run-{run} .error")
    assert "Age" in err.text and "115" in err.text
    assert "bad" in page.find_element(By.ID, f"{run}--Age").get_attribute("class")
    assert not page.find_elements(By.CSS_SELECTOR, f"#run-{run} .answer")
