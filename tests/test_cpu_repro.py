"""The same results on every CPU (issue 27): the default pipeline's data and models under two
CPU kernel sets on this one machine, in subprocesses.

"Native" is what this machine picks; "narrow" switches the SIMD-dispatched paths to AVX2 (or
lower, on an AVX2 machine): numpy's dispatch targets (``NPY_DISABLE_CPU_FEATURES``),
OpenBLAS's kernel family (``OPENBLAS_CORETYPE``: Sandybridge, AVX without FMA), MKL's
(``MKL_ENABLE_INSTRUCTIONS``), ATen's (``ATEN_CPU_CAPABILITY``) and oneDNN's
(``ONEDNN_MAX_CPU_ISA``). These are the differences between two real CPUs (an
AVX512-BF16 Zen and an AMX Xeon picked different kernels, and the committed metrics moved).

Across machines: ``tests/data/cpu_repro_golden.json`` holds the data hashes and the tiny
presets' predictions measured on the machine that committed it (its CPU is recorded there);
every run of this file compares the native run against it, so CI on any other CPU (an
AVX2-only EPYC, a Xeon with AMX) checks the same bytes and predictions to 1e-3.
``CLINLM_WRITE_GOLDEN=1`` rewrites it (only after a change that moves the results on purpose).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "data" / "cpu_repro_golden.json"


def cpu_name() -> str:
    """This machine's CPU model name (/proc/cpuinfo), for the messages and the golden file."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), []))
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({' '.join(simd) or 'no AVX2'})"


def against_golden(part: str, value: dict) -> dict:
    """The committed ``part`` of the golden file (rewritten from ``value`` with
    CLINLM_WRITE_GOLDEN=1), with the CPU it was measured on."""
    import torch
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("CLINLM_WRITE_GOLDEN") == "1":
        golden[part] = value
        golden[f"{part}_measured_on"] = {"cpu": cpu_name(), "torch": torch.__version__}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert part in golden, f"{GOLDEN} has no {part!r}: write it with CLINLM_WRITE_GOLDEN=1"
    return golden


def narrow_env() -> dict[str, str]:
    """Environment variables that make this process's libraries take narrower SIMD paths."""
    from numpy._core import _multiarray_umath as m
    found = [f for f in m.__cpu_dispatch__ if m.__cpu_features__.get(f)]
    above_avx2 = [f for f in found if f != "X86_V3"]
    avx512 = bool(above_avx2)
    return {"NPY_DISABLE_CPU_FEATURES": " ".join(above_avx2 or found),
            "OPENBLAS_CORETYPE": "Sandybridge",  # AVX without FMA: other roundings
            "MKL_ENABLE_INSTRUCTIONS": "AVX2" if avx512 else "SSE4_2",
            "ATEN_CPU_CAPABILITY": "avx2" if avx512 else "default",
            "ONEDNN_MAX_CPU_ISA": "AVX2" if avx512 else "SSE41"}


def run_worker(tmp_path: Path, name: str, env: dict[str, str], **spec) -> dict:
    """tests/cpu_repro_worker.py in a fresh interpreter with ``env`` added; its report."""
    out = tmp_path / name
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"out": str(out), **spec}))
    base = {k: v for k, v in os.environ.items()
            if k not in ("CLINLM_PRECISION", *narrow_env())}  # `auto` decides, nothing forced
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "cpu_repro_worker.py"),
                        str(out / "spec.json")], cwd=ROOT, capture_output=True, text=True,
                       env={**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", **env},
                       timeout=600)
    assert r.returncode == 0, f"{name}: {r.stdout[-2000:]}\n{r.stderr[-6000:]}"
    return json.loads((out / "report.json").read_text())


def test_synthetic_data_same_bytes_under_two_kernel_sets(tmp_path):
    """The synthetic generators (noshow table, vascular cohort + ECG signals) write the same
    bytes with numpy's widest and narrower SIMD paths and another OpenBLAS kernel family."""
    native = run_worker(tmp_path, "native", {}, parts=["data"])
    narrow = run_worker(tmp_path, "narrow", narrow_env(), parts=["data"])
    assert native["kernels"]["numpy"] != narrow["kernels"]["numpy"]  # two kernel sets ran
    assert set(native["data"]) >= {"noshow/appointments.csv", "vascular_age/subjects.parquet",
                                   "vascular_age/signals.npy"}
    assert native["data"] == narrow["data"]
    golden = against_golden("data", native["data"])
    assert native["data"] == golden["data"], (
        f"the synthetic data's bytes differ from those committed on {golden['data_measured_on']}"
        f" (this CPU: {cpu_name()})")


@pytest.mark.slow
def test_default_presets_same_predictions_under_two_kernel_sets(tiny_llama, tmp_path):
    """The default CPU presets (``auto`` precision, 4-bit QLoRA sft and probe-initialised
    head) trained on 20 rows of a tiny Llama predict the same to 1e-3 under both kernel sets:
    a short run resolves ``auto`` to float32 whatever the CPU's bf16 support."""
    from clinlm.llm.precision import AUTO_BF16_MIN_TOKENS
    native = run_worker(tmp_path, "native", {}, parts=["models"], base=str(tiny_llama))
    narrow = run_worker(tmp_path, "narrow", narrow_env(), parts=["models"], base=str(tiny_llama))
    assert native["kernels"] != narrow["kernels"]
    assert native["models"].keys() == narrow["models"].keys() == {
        "noshow/smollm2-sft", "vascular_age/smollm2-head"}
    for key, a in native["models"].items():
        b = narrow["models"][key]
        for side in (a, b):
            prec = side["precision"]
            assert prec["requested"] == "auto" and prec["resolved"] == "float32", prec
            assert prec["planned_tokens"] < AUTO_BF16_MIN_TOKENS
            assert set(prec["keys"].values()) <= {"float32", False}, prec
        assert len(a["pred"]) == len(b["pred"]) == 20
        diff = max(abs(x - y) for x, y in zip(a["pred"], b["pred"], strict=True))
        scale = 1.0 if key.startswith("noshow") else max(abs(x) for x in a["pred"])
        assert diff <= 1e-3 * scale, (key, diff, a["pred"][:5], b["pred"][:5])
    golden = against_golden("models", {k: v["pred"] for k, v in native["models"].items()})
    for key, pred in golden["models"].items():
        got = native["models"][key]["pred"]
        scale = 1.0 if key.startswith("noshow") else max(abs(x) for x in pred)
        diff = max(abs(x - y) for x, y in zip(got, pred, strict=True))
        assert diff <= 1e-3 * scale, (f"{key}: {diff:.2e} from the predictions committed on "
                                      f"{golden['models_measured_on']} (this CPU: {cpu_name()})")
