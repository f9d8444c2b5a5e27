"""The serve page in real headless Chromium (Debian's chromium + chromedriver, Selenium).

Opens the page of a real server, fills a form, submits, and reads the answer, the
uncertainty and the statement; then a bad input shows a clear message on the right field.
Skips, saying why, when chromium or its driver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.serve_project import build_project, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and Path(DRIVER).exists()),
    reason="needs Debian's chromium + chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run does it)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    pytest.importorskip("selenium", reason="selenium (requirements.txt) not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    project = build_project(tmp_path_factory)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    with running_server(project, ["vascular-gbdt", "noshow-gbdt"]) as (url, log):
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        try:
            driver.get(url + "/")
            yield driver
        finally:
            driver.quit()
    assert "Traceback" not in log.read_text()


def wait_for(driver, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def fill(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    el = driver.find_element(By.ID, element_id)
    el.clear()
    if value:
        el.send_keys(value)


def ask(driver, run: str) -> None:
    from selenium.webdriver.common.by import By
    card = wait_for(driver, f"#run-{run} form")
    # the previous answer/error goes away when the new one arrives
    driver.execute_script("arguments[0].replaceChildren()",
                          driver.find_element(By.CSS_SELECTOR, f"#run-{run} .out"))
    card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_regression_form_shows_estimate_interval_statement(page):
    wait_for(page, "#run-vascular-gbdt form")
    fill(page, "vascular-gbdt--age", "47")
    ask(page, "vascular-gbdt")
    box = wait_for(page, "#run-vascular-gbdt .answer")
    assert "90 % interval" in box.text and "47-year-old" in box.text
    assert "Statement the model saw" in box.text
    a = json.loads(box.get_attribute("data-answer"))
    assert a["y_lo"] <= a["y_pred"] <= a["y_hi"]
    assert f"{a['y_pred']:.1f}" in box.text


def test_classification_form_shows_probability(page, tmp_path):
    ask(page, "noshow-gbdt")
    box = wait_for(page, "#run-noshow-gbdt .answer")
    a = json.loads(box.get_attribute("data-answer"))
    assert 0 <= a["p_yes"] <= 1 and a["prediction"] in ("Yes", "No")
    assert f"probability of Yes: {a['p_yes']:.3f}" in box.text
    assert box.text.splitlines()[0] == a["prediction"]
    assert page.save_screenshot(str(tmp_path / "page.png"))


def test_bad_input_shows_the_field(page):
    from selenium.webdriver.common.by import By
    wait_for(page, "#run-noshow-gbdt form")
    fill(page, "noshow-gbdt--Age", "")  # a required field left empty
    ask(page, "noshow-gbdt")
    err = wait_for(page, "#run-noshow-gbdt .error")
    assert "Age" in err.text and "missing" in err.text
    assert "bad" in page.find_element(By.ID, "noshow-gbdt--Age").get_attribute("class")
    assert not page.find_elements(By.CSS_SELECTOR, "#run-noshow-gbdt .answer")
