"""Precision benchmark: float32 vs what ``auto`` picks on this machine -> ``bench/precision.json``.

    python bench/precision.py [--quick] [--reps 3]      (then: python bench/bench.py --render)

Measures, on the default ``smollm2-sft`` run (4-bit NF4 base, LoRA r 16, the real code path:
``SFTMethod.train`` -> ``load_model`` + ``fit``; ``Scorer.from_run`` for prediction):

* matmul GFLOP/s ceilings, float32 vs bfloat16 (2048 x 2048; 512 when bf16 is emulated);
* training tokens/s: the float32 path (params.yaml where ``auto`` finds no fast bf16) vs the
  params.yaml default (4-bit compute dtype, ``non_quantized_dtype`` and ``attn_implementation``
  all ``auto``), vs that with a float32 residual stream, with sdpa attention, with
  ``training.bf16`` autocast, and the float32 path as it was before (sdpa, fp32 stream);
  with ``training.torch_compile`` (regional: the decoder layers), bf16 and float32;
* prediction rows/s and p(Yes) drift: float32 vs float32 merged weights + ``autocast_dtype:
  auto`` vs ``dtype: auto`` (bf16 merged weights).

The CPU is shared with other work, so the variants are interleaved inside every repetition
(a neighbour's load hits all of them alike) and medians are reported. The CPU's model name
and flags are recorded beside the figures.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0] and its bench.py would shadow the `bench` folder
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

OUT = ROOT / "bench/precision.json"
BATCH = 8           # rows per training step (as bench/bench.py)
TIMED_STEPS = 4     # timed training steps per repetition (after one warm-up step)
PREDICT_ROWS = 96   # rows scored per repetition (3 batches of 32)
FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
         "amx_fp16")

# each variant: the params.yaml `smollm2-sft` entry with these keys changed (`bnb.` and
# `training.` / `predict.` prefixes name the section)
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    # the fp32 path: what params.yaml runs where `auto` finds no fast bf16 (AVX2 CPUs)
    "float32": {"bnb.bnb_4bit_compute_dtype": "float32"},
    "float32, sdpa, no stream cast (before)": {"bnb.bnb_4bit_compute_dtype": "float32",
                                               "attn_implementation": None,
                                               "non_quantized_dtype": None},
    "params.yaml default (auto)": {},
    "auto, float32 stream (non_quantized_dtype: float32)": {"non_quantized_dtype": "float32"},
    "auto, sdpa attention": {"attn_implementation": None},
    "auto + training.bf16 (autocast)": {"training.bf16": "auto"},
    # regional compilation (dynamo.use_regional_compilation in params.yaml): the first step
    # compiles (cold in repetition 0: a fresh inductor cache per benchmark run)
    "params.yaml default + training.torch_compile": {"training.torch_compile": True},
    "float32 + training.torch_compile": {"bnb.bnb_4bit_compute_dtype": "float32",
                                         "training.torch_compile": True},
}
PREDICT_VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {"bnb.bnb_4bit_compute_dtype": "float32", "predict.autocast_dtype": None},
    "params.yaml default: fp32 weights + autocast auto": {},
    "dtype auto: bf16 weights + autocast auto": {"dtype": "auto"},
}


def spread(xs: list[float]) -> dict[str, float]:
    """Median and min/max of a list of measurements."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def machine() -> dict[str, Any]:
    """The CPU (model name, the flags that decide bf16 speed), threads and what auto picks."""
    import torch

    from clinlm.llm.precision import cpu_flags, cpu_name, resolve
    flags = cpu_flags()
    dtype, reason = resolve("cpu")
    return {"cpu": cpu_name(), "flags": {f: bool(flags.get(f)) for f in FLAGS},
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "auto": {"resolved": dtype, "reason": reason}}


def matmul_ceiling(n: int = 2048, reps: int = 3, seconds: float = 0.5) -> dict[str, Any]:
    """GFLOP/s of ``n x n`` products, float32 and bfloat16 interleaved, ``reps`` times.

    An emulated bf16 product (AVX2 CPUs: ~1 GFLOP/s) would take many seconds at 2048, so
    bf16 falls back to 512 when a first 512 product is that slow."""
    import torch
    sizes = {"float32": n, "bfloat16": n}
    probe = torch.randn(512, 512, dtype=torch.bfloat16)
    probe @ probe  # the first call initialises oneDNN: time the second
    t = time.perf_counter()
    probe @ probe
    if 2 * 512**3 / (time.perf_counter() - t) / 1e9 < 20:
        sizes["bfloat16"] = 512
    mats = {d: (torch.randn(s, s, dtype=getattr(torch, d)), torch.randn(s, s, dtype=getattr(torch, d)))
            for d, s in sizes.items()}
    inner = {}
    for d, (a, b) in mats.items():  # warm-up; products per timing so that one lasts ~seconds
        t = time.perf_counter()
        a @ b
        inner[d] = max(1, int(seconds / max(time.perf_counter() - t, 1e-6)))
    clocks = {d: Clock() for d in mats}
    for _ in range(reps):
        for d, (a, b) in mats.items():
            clocks[d].start()
            for _ in range(inner[d]):
                a @ b
            clocks[d].stop()
    out: dict[str, Any] = {"sizes": sizes}
    for d, c in clocks.items():
        flop = 2 * sizes[d] ** 3 * inner[d] / 1e9
        out[f"{d}_gflops"] = spread([flop / t for t in c.wall])
        # per CPU-second of all threads: x threads = the rate the machine would give alone
        out[f"{d}_gflops_per_cpu_second"] = spread([flop / t for t in c.cpu])
    return out


@functools.cache
def _params() -> tuple[dict[str, Any], dict[str, Any]]:
    """The smollm2-sft entry and the noshow task, read once (params.yaml may be mid-edit
    by someone else later in a long measurement)."""
    from bench.bench import model_cfg, task_cfg
    return model_cfg(), task_cfg()


def task_cfg() -> dict[str, Any]:
    return copy.deepcopy(_params()[1])


def _cfg(variant: dict[str, Any], **over: Any) -> dict[str, Any]:
    """The ``smollm2-sft`` entry with ``over`` (sections updated) and ``variant``'s keys set."""
    cfg = copy.deepcopy(_params()[0])
    for k, v in over.items():
        cfg[k].update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    for key, value in variant.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return cfg


class Clock:
    """Wall and process-CPU seconds of a region: on a CPU shared with other work the wall
    time swings with the neighbours' load, the CPU seconds this process spent much less."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])


def step_clock() -> tuple[Clock, Any]:
    """A Clock and a TrainerCallback timing every optimizer step with it."""
    from transformers import TrainerCallback
    clock = Clock()

    class _CB(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.start()

        def on_step_end(self, args, state, control, **kw):
            clock.stop()

    return clock, _CB()


def train_once(variant: dict[str, Any], df, out_dir: Path, steps: int) -> dict[str, Any]:
    """One short training through ``SFTMethod.train`` (``BATCH`` rows a step, ``df`` at least
    ``BATCH * steps`` rows); per-step figures after the warm-up."""
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import SFTMethod

    cfg = _cfg(variant, training={"max_steps": steps, "per_device_train_batch_size": BATCH,
                                  "gradient_accumulation_steps": 1}, max_train_rows=None)
    clock, callback = step_clock()
    run = Run("noshow", "classification", "bench", cfg, out_dir, out_dir, seed=42,
              task_cfg=task_cfg())
    df = df.head(BATCH * steps)  # tokens of exactly the rows the steps see
    info = SFTMethod().train(run, df, extra_callbacks=[callback])
    per_step = info["tokens"] / steps
    return {"tokens_per_second": [per_step / s for s in clock.wall[1:]],
            "tokens_per_cpu_second": [per_step / s for s in clock.cpu[1:]],
            "first_step_seconds": clock.wall[0],
            "losses": [info["first_loss"], info["last_loss"]], "precision": info["precision"],
            "attn_implementation": info["attn_implementation"],
            "non_quantized_dtype": info["non_quantized_dtype"]}


def predict_once(variant: dict[str, Any], adapter: Path, prompts: list[str]) -> dict[str, Any]:
    """Rows/s of the predict stage's scorer over ``prompts`` (after an 8-row warm-up)."""
    import numpy as np

    from clinlm.llm.scorer import Scorer
    from clinlm.methods.interface import Run

    cfg = Run("noshow", "classification", "bench", _cfg(variant), adapter, adapter).cfg
    scorer = Scorer.from_run(adapter, cfg)
    scorer.choice_probs(prompts[:8], ["Yes", "No"])
    bs, clock, counts, p_yes = scorer.batch_size, Clock(), [], np.zeros(len(prompts))
    for s in range(0, len(prompts), bs):
        clock.start()
        p_yes[s:s + bs] = scorer.choice_probs(prompts[s:s + bs], ["Yes", "No"])[:, 0]
        clock.stop()
        counts.append(len(prompts[s:s + bs]))
    weights = {str(p.dtype) for n, p in scorer.model.named_parameters() if "proj" in n}
    return {"rows_per_second": [k / t for k, t in zip(counts, clock.wall, strict=True)],
            "rows_per_cpu_second": [k / t for k, t in zip(counts, clock.cpu, strict=True)],
            "p_yes": p_yes.tolist(),
            "autocast": scorer.autocast_dtype, "proj_weights": sorted(weights)}


def measure(reps: int, quick: bool) -> dict[str, Any]:
    """Every measurement, variants interleaved inside each repetition."""
    import numpy as np

    from bench.bench import rows
    from clinlm.llm.tokenizer import load_tokenizer
    from clinlm.methods.sft import prompt_texts

    timed = 1 if quick else TIMED_STEPS
    n_pred = 32 if quick else PREDICT_ROWS
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                           "command": "python bench/precision.py" + (" --quick" if quick else ""),
                           "batch": BATCH, "timed_steps": timed, "reps": reps}
    res["ceiling"] = matmul_ceiling(512 if quick else 2048, reps)
    df = rows(BATCH * (timed + 1))
    train: dict[str, dict[str, Any]] = {k: {"tokens_per_second": [], "losses": []}
                                        for k in TRAIN_VARIANTS}
    pred: dict[str, dict[str, Any]] = {k: {"rows_per_second": []} for k in PREDICT_VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"  # a briefly trained adapter, so merging matters
        n = 2 if quick else 8
        train_once(TRAIN_VARIANTS["float32"], rows(BATCH * n, seed=7), adapter, n)
        prompts = prompt_texts(load_tokenizer(adapter), rows(n_pred, seed=3)["statement"].tolist(),
                               task_cfg())
        for rep in range(reps):
            for name, variant in TRAIN_VARIANTS.items():
                r = train_once(variant, df, Path(tmp) / f"t{rep}", timed + 1)
                train[name]["tokens_per_second"] += r["tokens_per_second"]
                train[name].setdefault("tokens_per_cpu_second", [])
                train[name]["tokens_per_cpu_second"] += r["tokens_per_cpu_second"]
                train[name]["losses"].append(r["losses"])
                train[name].setdefault("first_step_seconds", []).append(r["first_step_seconds"])
                train[name].update({k: r[k] for k in ("precision", "attn_implementation",
                                                      "non_quantized_dtype")})
                print(f"[precision] rep {rep} train {name}: "
                      f"{statistics.median(r['tokens_per_second']):.0f} tokens/s", flush=True)
            for name, variant in PREDICT_VARIANTS.items():
                r = predict_once(variant, adapter, prompts)
                pred[name]["rows_per_second"] += r["rows_per_second"]
                pred[name].setdefault("rows_per_cpu_second", [])
                pred[name]["rows_per_cpu_second"] += r["rows_per_cpu_second"]
                pred[name].update(p_yes=r["p_yes"], autocast=r["autocast"],
                                  proj_weights=r["proj_weights"])
                print(f"[precision] rep {rep} predict {name}: "
                      f"{statistics.median(r['rows_per_second']):.2f} rows/s", flush=True)
    ref = np.asarray(pred["float32"]["p_yes"])
    for p in pred.values():
        p_yes = np.asarray(p.pop("p_yes"))
        p["max_abs_p_yes_diff_vs_float32"] = float(np.abs(p_yes - ref).max())
        p["label_agreement_vs_float32"] = float(np.mean((p_yes >= 0.5) == (ref >= 0.5)))
        p["rows_per_second"] = spread(p["rows_per_second"])
        p["rows_per_cpu_second"] = spread(p["rows_per_cpu_second"])
    for t in train.values():
        t["tokens_per_second"] = spread(t["tokens_per_second"])
        t["tokens_per_cpu_second"] = spread(t["tokens_per_cpu_second"])
    res["train"], res["predict"] = train, pred
    return res


def markdown(path: Path = OUT) -> list[str]:
    """The "Precision" section of BENCHMARKS.md, from ``bench/precision.json``."""
    head = ["## Precision: float32 vs `auto`", ""]
    if not path.is_file():
        return head + ["Not measured: run `python bench/precision.py`, then "
                       "`python bench/bench.py --render`."]
    r = json.loads(path.read_text())
    m, c = r["machine"], r["ceiling"]

    def sp(d: dict[str, float], fmt: str = ".1f") -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}–{d['max']:{fmt}}, n={d['n']})"

    def ratio(group: dict, name: str, key: str) -> str:
        a, b = group[name][key], group["float32"][key]
        return f"{a['median'] / b['median']:.2f}x / {a['max'] / b['max']:.2f}x"

    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none of " + ", ".join(m["flags"])
    lines = head + [
        f"Measured {r['date']} on **{m['cpu']}** ({m['cores']} cores, {m['torch_threads']} torch "
        f"threads; flags: {flags}), torch {m['torch']}; `{r['command']}`. `auto` picks "
        f"**{m['auto']['resolved']}** here ({m['auto']['reason']}). The variants are "
        f"interleaved in each of {r['reps']} repetitions, because the CPU is shared; median "
        "(min–max, n). Neighbours' load lowers the wall-clock rates and, less, the rates per "
        "CPU-second of this process (its OpenMP threads spin while descheduled); the max is the "
        "least-disturbed figure, so the ratios to float32 are given for medians and maxima.", "",
        "| matmul | size | GFLOP/s (wall) | GFLOP per CPU-second |", "|---|---|---|---|"]
    for d in ("float32", "bfloat16"):
        lines.append(f"| {d} | {c['sizes'][d]}² | {sp(c[f'{d}_gflops'])} | "
                     f"{sp(c[f'{d}_gflops_per_cpu_second'])} |")
    if c.get("note"):
        lines += ["", f"Matmul rows: {c['note']}."]
    tr, pr = r["train"], r["predict"]
    lines += ["", f"Training, `smollm2-sft` (4-bit NF4 base, LoRA r 16, batch {r['batch']}, "
              f"{r['timed_steps']} timed steps per repetition, `SFTMethod.train`):", "",
              "| precision | tokens/s (wall) | tokens per CPU-second | vs float32 (CPU: median / max) | "
              "first step, s (per repetition; compiling: rep 0 cold) | first → last loss (per "
              "repetition) |", "|---|---|---|---|---|---|"]
    for name, t in tr.items():
        losses = "; ".join(f"{a:.3f} → {b:.3f}" for a, b in t["losses"])
        keys = t["precision"]["keys"]
        lines.append(f"| {name} ({keys['bnb.bnb_4bit_compute_dtype']} compute, "
                     f"{t.get('non_quantized_dtype')} stream, {t.get('attn_implementation')}) | "
                     f"{sp(t['tokens_per_second'])} | "
                     f"{sp(t['tokens_per_cpu_second'])} | "
                     f"{ratio(tr, name, 'tokens_per_cpu_second')} | "
                     f"{', '.join(f'{x:.1f}' for x in t.get('first_step_seconds', []))} | {losses} |")
    lines += ["", "Prediction (the predict stage's scorer: adapter merged into dequantized "
              "weights, batch 32):", "",
              "| precision | rows/s (wall) | rows per CPU-second | vs float32 (CPU: median / max) | "
              "max abs. p(Yes) diff | label agreement |", "|---|---|---|---|---|---|"]
    for name, p in pr.items():
        lines.append(f"| {name} (autocast {p['autocast']}, weights {'/'.join(p['proj_weights'])})"
                     f" | {sp(p['rows_per_second'], '.2f')} | {sp(p['rows_per_cpu_second'], '.2f')}"
                     f" | {ratio(pr, name, 'rows_per_cpu_second')} | "
                     f"{p['max_abs_p_yes_diff_vs_float32']:.4f} | "
                     f"{100 * p['label_agreement_vs_float32']:.0f} % |")
    lines += ["", "`auto` (clinlm/llm/precision.py) reads the CPU flags, not a timing: bf16 "
              "with AMX-BF16 or AVX512-BF16, float32 on AVX2-only CPUs (where bf16 matmuls are "
              "emulated, ~100x slower than fp32 measured on one); on CUDA bf16 where the GPU "
              "has it natively. `CLINLM_PRECISION=float32|bfloat16` overrides it.",
              "", "The `training.torch_compile` rows compile the decoder layers in place "
              "(`dynamo.use_regional_compilation`); their first step is the compile, cold in "
              "repetition 0 (a fresh inductor cache per benchmark run), and is left out of the "
              "rates, as every variant's first step is. It pays off on runs of minutes, not on "
              "the default ~25 s `make repro` training: `torch_compile: auto` (the CPU presets) "
              "compiles from 300k planned training tokens on."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (variants interleaved)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    # a fresh inductor cache: the compiled variants' first step is a cold compile in rep 0
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="clinlm-inductor-")
    from clinlm.io import write_json
    res = measure(args.reps, args.quick)
    write_json(Path(args.out), res)
    print("\n".join(markdown(Path(args.out))))


if __name__ == "__main__":
    main()
