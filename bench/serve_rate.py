"""Requests per second of `python -m clinlm serve` on single-row /predict requests.

Starts the real server (one run) on 127.0.0.1, waits until it is up (models loaded and warmed
up), then sends ``--requests`` single-row requests one after another (the run's field
examples, the first number field varied so no two rows are equal) and prints, as JSON: the
start-up seconds, requests per second, median and worst latency, the server process's CPU
seconds per request (user + system: on a machine shared with other jobs this is the steadier
number) and its resident memory before and after (a model reloaded per request shows as
growth). Run from a project folder with trained runs:

    python bench/serve_rate.py --run noshow-stack --requests 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _proc(pid: int) -> tuple[float, float]:
    """(CPU seconds user + system, resident MiB) of a Linux process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:")) / 1024
    return cpu, rss


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clinlm", "serve", "--run", args.run,
                             "--port", str(args.port), "--params", args.params],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        start_s = time.perf_counter() - t0
        with urllib.request.urlopen(f"{url}/api/runs", timeout=10) as r:
            fields = json.loads(r.read())["runs"][0]["fields"]
        example = {f["name"]: f["example"] for f in fields if f["example"] is not None}
        vary = next(f["name"] for f in fields if f["kind"] == "number" and f["example"])
        cpu0, rss0 = _proc(proc.pid)
        lat = []
        t1 = time.perf_counter()
        for i in range(args.requests):
            t = time.perf_counter()
            out = _post(f"{url}/predict", {"run": args.run,
                                           "fields": {**example, vary: example[vary] + i % 20}})
            lat.append(time.perf_counter() - t)
            assert out["predictions"][0].get("status", "ok") == "ok", out
        wall = time.perf_counter() - t1
        cpu1, rss1 = _proc(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    lat.sort()
    print(json.dumps({
        "run": args.run, "requests": args.requests, "startup_s": round(start_s, 1),
        "requests_per_s": round(args.requests / wall, 2),
        "latency_median_s": round(lat[len(lat) // 2], 3), "latency_max_s": round(lat[-1], 3),
        "server_cpu_s_per_request": round((cpu1 - cpu0) / args.requests, 3),
        "rss_mib_before": round(rss0), "rss_mib_after": round(rss1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
