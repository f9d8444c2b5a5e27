"""Regenerate docs/page.png: the serve page of a real server, each run answered once.

    python docs/screenshot.py                      # after `make repro`: the default SmolLM2 sft runs
    python docs/screenshot.py --run noshow-gbdt --run vascular-gbdt --project /tmp/proj

Starts ``python -m clinlm serve`` on a free 127.0.0.1 port in ``--project`` (the folder with
params.yaml and data/models), opens the page in Debian's headless Chromium (Selenium +
/usr/bin/chromedriver, nothing downloaded), fills every run's form as a person would (the
required fields and the first half of the others with their examples, the rest left empty so
the statement shows what "not recorded" looks like), presses Ask and saves a full-page
screenshot atomically (a 64-colour PNG: a few tens of kB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ["noshow-smollm2-sft", "vascular-smollm2-sft"]

#: fills a form (arguments[0]): required fields, then the first half of the others, each with
#: its example (the page's fields start empty; the example is only a placeholder)
FILL = """
const els = [...arguments[0].querySelectorAll('input, select')];
const req = el => el.closest('label').querySelector('.req') !== null;
const rest = els.filter(el => !req(el) && el.dataset.example !== '');
const pick = new Set([...els.filter(req), ...rest.slice(0, Math.ceil(rest.length / 2))]);
for (const el of pick) {
  let v = el.dataset.example;
  if (el.tagName === 'SELECT') {
    const ok = [...el.options].map(o => o.value);
    v = ok.includes(v) ? v : ok[1];
  }
  el.value = v;
  el.dispatchEvent(new Event('change'));
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} (its log is above)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer in {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Serve, answer every run's form in Chromium, save the screenshot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", help=f"runs to show (default: {DEFAULT_RUNS})")
    ap.add_argument("--project", type=Path, default=ROOT, help="folder with params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png")
    ap.add_argument("--width", type=int, default=1360)
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium or not Path("/usr/bin/chromedriver").exists():
        print("needs Debian's chromium and chromium-driver: apt-get install -y chromium "
              "chromium-driver", file=sys.stderr)
        return 2
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sys.path.insert(0, str(ROOT))
    from clinlm.io import atomic_path

    runs = args.run or DEFAULT_RUNS
    port = _free_port()
    cmd = [sys.executable, "-m", "clinlm", "serve", "--port", str(port)]
    for r in runs:
        cmd += ["--run", r]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=args.project, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc, timeout=600)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--force-device-scale-factor=1",
                  f"--window-size={args.width},900"):
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 300)
            for r in runs:
                form = wait.until(ec.visibility_of_element_located(
                    (By.CSS_SELECTOR, f"#run-{r} form")))
                driver.execute_script(FILL, form)
                form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                wait.until(ec.visibility_of_element_located(
                    (By.CSS_SELECTOR, f"#run-{r} .answer, #run-{r} .error")))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            # headless windows are capped at the screen size: grow the viewport instead
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": args.width, "height": height + 20, "deviceScaleFactor": 1,
                "mobile": False})
            time.sleep(0.3)
            with atomic_path(args.out) as tmp:
                if not driver.save_screenshot(str(tmp)):
                    raise SystemExit("chromium took no screenshot")
                _shrink(tmp)
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


def _shrink(path: Path) -> None:
    """A flat-colour page needs few colours: 64 keep it sharp at a fraction of the size."""
    try:
        from PIL import Image
    except ImportError:  # the full-colour PNG is kept
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, format="PNG", optimize=True)


if __name__ == "__main__":
    sys.exit(main())
