"""Throughput benchmark: the project's train/predict paths against the seed-style recipe.

``make bench`` runs every part in its own subprocess (so each peak RSS is its own), then
writes ``bench/results.json`` and ``BENCHMARKS.md`` and prints the table. Parts:

* ``ceiling``  -- fp32 and bf16 matmul GFLOP/s of this machine (square products).
* ``train``    -- tokens/s and peak RSS of (a) the project's train stage code
  (``SFTMethod.train``: 4-bit NF4 + LoRA, answer-only loss, adapters in the compute dtype,
  no checkpointing) and (b) the seed-style recipe: TRL ``SFTTrainer`` defaults on the full
  chat text (default collator, loss over every token, gradient checkpointing on, fp32
  training args, LoRA dropout 0.05), same base, rows, batch size and LoRA r/alpha/targets.
  Plus one ablation of the project path with the seed's LoRA dropout.
* ``predict``  -- rows/s of (a) the predict stage code (``Scorer``: one batched
  forward, candidate-token logits, merged dequantized adapter) and (b) the seed-style
  loop: one ``generate()`` per row on the 4-bit model + adapter, parse Yes/No. Label
  agreement between the two.
* ``statements`` -- seconds to build statements for the full Kaggle file
  (``../shared/data/noshow``; skipped when absent).
* ``precision`` -- float32 vs ``auto`` (bf16 where this CPU has AVX512-BF16/AMX) matmul
  ceilings, training tokens/s and prediction rows/s (``bench/precision.py`` writes
  ``bench/precision.json``; ``--only precision`` runs just that part and re-renders).

Every timed figure is the median of several repetitions (steps, batches or runs) with its
min-max spread. Sizes are set by the constants below (``--quick`` shrinks them for a test).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0] and its bench.py would shadow the `bench` folder
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

BASE = ROOT / "data/models/base/smollm2-135m-instruct"
KAGGLE = ROOT.parent / "shared/data/noshow/KaggleV2-May-2016.csv.zip"
BATCH = 8              # rows per training step, both recipes
TRAIN_STEPS = 4        # timed steps (after one warm-up step)
SEED_STEPS = 3         # the seed-style recipe is slow: fewer timed steps
PREDICT_ROWS = 96      # rows scored by the predict stage code (3 batches of 32)
GENERATE_ROWS = 24     # rows through the per-row generate() loop
REPS = 3               # repetitions of the ceiling and statements measurements


def spread(xs: list[float]) -> dict[str, float]:
    """Median and min/max of a list of measurements."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def rows(n: int, seed: int = 42):
    """``n`` no-show statements from the synthetic generator (fixed seed, both labels)."""
    from clinlm.noshow.statements import build_statements
    from clinlm.noshow.synthetic import generate_synthetic

    table = build_statements(generate_synthetic(max(n * 4, 400), seed))
    yes = table[table["label"] == "Yes"].head(n // 4)
    no = table[table["label"] == "No"].head(n - len(yes))
    import pandas as pd
    return pd.concat([yes, no]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def model_cfg(**over: Any) -> dict[str, Any]:
    """The default ``models.smollm2-sft`` entry of params.yaml, with overrides."""
    import copy

    from clinlm.params import load_params
    cfg = copy.deepcopy(load_params(ROOT / "params.yaml")["models"]["smollm2-sft"])
    cfg["base"] = str(BASE)
    cfg["training"].update(report_to="none", logging_steps=1)
    for k, v in over.items():
        cfg[k].update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    return cfg


def task_cfg() -> dict[str, Any]:
    from clinlm.params import load_params
    return load_params(ROOT / "params.yaml")["tasks"]["noshow"]


class StepTimer:
    """TrainerCallback recording the wall time of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.steps.append(time.perf_counter() - timer.t0)

        self.steps: list[float] = []
        self.callback = _CB()


# ---- parts (each runs in its own process) ---------------------------------------------


def part_ceiling(quick: bool) -> dict[str, Any]:
    """fp32 and bf16 matmul rates (interleaved, 2048²), the CPU and what ``auto`` picks."""
    import torch

    from bench.precision import machine, matmul_ceiling
    out = matmul_ceiling(512 if quick else 2048, REPS)
    out["torch_threads"] = torch.get_num_threads()
    out["machine"] = machine()
    return out


def part_precision(quick: bool) -> dict[str, Any]:
    """float32 vs ``auto`` training and prediction (bench/precision.py -> precision.json)."""
    from bench import precision
    from clinlm.io import write_json
    res = precision.measure(1 if quick else 3, quick)
    if not quick:
        write_json(precision.OUT, res)
    return {"written": str(precision.OUT.relative_to(ROOT)) if not quick else None,
            "auto": res["machine"]["auto"]}


def _train_project(df, cfg, steps: int, out_dir: Path) -> dict[str, Any]:
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import SFTMethod

    timer = StepTimer()
    run = Run("noshow", "classification", "bench", cfg, out_dir, out_dir, seed=42,
              task_cfg=task_cfg())
    info = SFTMethod().train(run, df, extra_callbacks=[timer.callback])
    return {"step_seconds": timer.steps, "tokens": info["tokens"],
            "answer_tokens": info["answer_tokens"],
            "trainable_parameters": info["trainable_parameters"]}


def _train_seed(df, cfg, steps: int, out_dir: Path, **training: Any) -> dict[str, Any]:
    """TRL SFTTrainer as the seed notebooks use it: text in, defaults everywhere.

    ``training`` overrides the TrainingArguments (e.g. bf16 and accumulation on a GPU)."""
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from clinlm.llm.builders import build_bnb_config, build_lora_config, build_training_kwargs
    from clinlm.llm.tokenizer import load_tokenizer
    from clinlm.prompts import build_messages

    tok = load_tokenizer(cfg["base"], padding_side="right")
    texts = [tok.apply_chat_template(build_messages(s, task_cfg(), y), tokenize=False)
             for s, y in zip(df["statement"], df["label"], strict=True)]
    model = AutoModelForCausalLM.from_pretrained(  # as the seed notebooks load it
        cfg["base"], quantization_config=build_bnb_config(cfg["bnb"]),
        dtype=getattr(__import__("torch"), training.pop("dtype", "float32")))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, build_lora_config(cfg["lora"]))
    timer = StepTimer()
    args = SFTConfig(**build_training_kwargs(
        {"per_device_train_batch_size": BATCH, "max_steps": steps, "learning_rate": 2e-4,
         "bf16": False, "gradient_checkpointing": True, "report_to": "none",
         "save_strategy": "no", "logging_steps": 1, **training}, str(out_dir), 42), max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tok, callbacks=[timer.callback])
    trainer.train()
    n_tok = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"step_seconds": timer.steps, "tokens": n_tok, "answer_tokens": 2 * len(df)}


def part_train(quick: bool, recipe: str) -> dict[str, Any]:
    steps = (1 if quick else (SEED_STEPS if recipe == "seed" else TRAIN_STEPS)) + 1  # + warm-up
    df = rows(BATCH * steps)
    with tempfile.TemporaryDirectory() as tmp:
        if recipe == "seed":
            cfg = model_cfg(lora={"lora_dropout": 0.05})
            res = _train_seed(df, cfg, steps, Path(tmp))
        else:
            over = {"lora": {"lora_dropout": 0.05}} if recipe == "project_dropout" else {}
            # BATCH rows a step, as the seed recipe (params.yaml's own batch is 4)
            cfg = model_cfg(training={"max_steps": steps, "per_device_train_batch_size": BATCH,
                                      "gradient_accumulation_steps": 1},
                            max_train_rows=None, **over)
            res = _train_project(df, cfg, steps, Path(tmp))
    timed = res["step_seconds"][1:]  # the first step warms caches and allocators
    per_step_tokens = res["tokens"] / steps
    per_step_answer = res["answer_tokens"] / steps
    return {"recipe": recipe, "batch": BATCH, "timed_steps": len(timed),
            "step_seconds": spread(timed),
            "tokens_per_second": spread([per_step_tokens / s for s in timed]),
            "answer_tokens_per_second": spread([per_step_answer / s for s in timed]),
            "tokens_per_step": per_step_tokens, "peak_rss_gib": peak_rss_gib()}


def _adapter(tmp: Path) -> tuple[Path, str]:
    """A trained noshow adapter: the pipeline's if present, else a short bench training."""
    piped = ROOT / "data/models/noshow/smollm2-sft"
    if (piped / "adapter_config.json").is_file():
        return piped, "pipeline (data/models/noshow/smollm2-sft)"
    cfg = model_cfg(training={"max_steps": 16}, max_train_rows=None)
    _train_project(rows(BATCH * 16, seed=7), cfg, 16, tmp)
    return tmp, "bench-trained (16 steps)"


def part_predict(quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from clinlm.llm.scorer import Scorer
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import prompt_texts

    n_rows, n_gen = (32, 4) if quick else (PREDICT_ROWS, GENERATE_ROWS)
    df = rows(n_rows, seed=3)
    cfg = model_cfg()
    with tempfile.TemporaryDirectory() as tmp:
        adapter, origin = _adapter(Path(tmp))
        t = time.perf_counter()
        scorer = Scorer.from_run(adapter, Run("noshow", "classification", "bench", cfg, adapter,
                                              adapter).cfg)
        load_s = time.perf_counter() - t
        prompts = prompt_texts(scorer.tok, df["statement"].tolist(), task_cfg())
        scorer.choice_probs(prompts[:8], ["Yes", "No"])  # warm-up
        bs, rates = scorer.batch_size, []
        p_yes = np.zeros(len(prompts))
        for s in range(0, len(prompts), bs):
            t = time.perf_counter()
            p_yes[s:s + bs] = scorer.choice_probs(prompts[s:s + bs], ["Yes", "No"])[:, 0]
            rates.append(len(prompts[s:s + bs]) / (time.perf_counter() - t))
        project = {"rows_per_second": spread(rates), "load_seconds": load_s, "rows": len(prompts)}
        del scorer

        # seed-style: 4-bit model + adapter (not merged), one generate() per row, parse text
        from peft import PeftModel

        from clinlm.llm.load import load_model
        from clinlm.llm.tokenizer import load_tokenizer
        tok = load_tokenizer(adapter, padding_side="left")
        model = PeftModel.from_pretrained(load_model({**cfg, "dtype": "float32"}, "causal"),
                                          str(adapter)).eval()
        answers, times = [], []
        with torch.inference_mode():
            for prompt in prompts[:n_gen]:
                t = time.perf_counter()
                enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=4, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                times.append(time.perf_counter() - t)
                answers.append("Yes" if text.strip().lower().startswith("yes") else
                               "No" if text.strip().lower().startswith("no") else None)
        ours = np.where(p_yes[:n_gen] >= 0.5, "Yes", "No")
        parsed = [a is not None for a in answers]
        agree = float(np.mean([a == b for a, b in zip(answers, ours, strict=True)]))
        seed = {"rows_per_second": spread([1 / x for x in times[1:]]), "rows": n_gen,
                "parsed_share": float(np.mean(parsed))}
    return {"adapter": origin, "project": project, "seed": seed, "label_agreement": agree,
            "peak_rss_gib": peak_rss_gib(), "project_p_yes_mean": float(p_yes.mean())}


def part_statements(quick: bool) -> dict[str, Any]:
    if not KAGGLE.is_file():
        return {"skipped": f"{KAGGLE} not found (the full Kaggle file lives in ../shared/data)"}
    from clinlm.noshow.schema import read_csv, validate
    from clinlm.noshow.statements import build_statements

    t = time.perf_counter()
    raw = read_csv(KAGGLE)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    clean, _ = validate(raw, KAGGLE)
    validate_s = time.perf_counter() - t
    secs = []
    for _ in range(1 if quick else REPS):
        t = time.perf_counter()
        table = build_statements(clean)
        secs.append(time.perf_counter() - t)
    return {"rows": len(table), "raw_rows": len(raw), "seconds": spread(secs),
            "rows_per_second": len(table) / statistics.median(secs),
            "read_seconds": read_s, "validate_seconds": validate_s}


PARTS = {"ceiling": part_ceiling, "train_project": lambda q: part_train(q, "project"),
         "train_project_dropout": lambda q: part_train(q, "project_dropout"),
         "train_seed": lambda q: part_train(q, "seed"), "predict": part_predict,
         "statements": part_statements, "precision": part_precision}


# ---- orchestration ------------------------------------------------------------------------


def run_part(name: str, quick: bool) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--part", name, "--json", f.name] + (["--quick"] if quick else [])
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        res = json.loads(Path(f.name).read_text())
    res["part_seconds"] = round(time.perf_counter() - t, 1)
    print(f"[bench] {name}: {res['part_seconds']} s", flush=True)
    return res


def summarize(parts: dict[str, dict[str, Any]], matmul_n: int) -> dict[str, Any]:
    c, tp, ts = parts["ceiling"], parts["train_project"], parts["train_seed"]
    pr, st = parts["predict"], parts["statements"]
    fp32, bf16 = c["float32_gflops"]["median"], c["bfloat16_gflops"]["median"]
    best = max(fp32, bf16)
    tok_s = tp["tokens_per_second"]["median"]
    train_flops = 4 * matmul_n * tok_s / 1e9  # LoRA, frozen base: fwd 2 + input-grad 2
    pred_tok_s = pr["project"]["rows_per_second"]["median"] * tp["tokens_per_step"] / BATCH
    return {
        "train_speedup": tok_s / ts["tokens_per_second"]["median"],
        "train_answer_tokens_speedup": (tp["answer_tokens_per_second"]["median"]
                                        / ts["answer_tokens_per_second"]["median"]),
        "train_tokens_per_second": tok_s,
        "seed_train_tokens_per_second": ts["tokens_per_second"]["median"],
        "train_mfu": train_flops / best,
        "train_mfu_vs_bf16_ceiling": train_flops / bf16,
        "train_gflops": train_flops,
        "predict_speedup": (pr["project"]["rows_per_second"]["median"]
                            / pr["seed"]["rows_per_second"]["median"]),
        "predict_rows_per_second": pr["project"]["rows_per_second"]["median"],
        "seed_predict_rows_per_second": pr["seed"]["rows_per_second"]["median"],
        "predict_mfu": 2 * matmul_n * pred_tok_s / 1e9 / best,
        "predict_label_agreement": pr["label_agreement"],
        "statements_seconds": st["seconds"]["median"] if "seconds" in st else None,
        "train_peak_rss_gib": tp["peak_rss_gib"],
        "fp32_gflops": fp32, "bf16_gflops": bf16, "matmul_parameters": matmul_n,
    }


def sp(d: dict[str, float], fmt: str = ".1f") -> str:
    """A spread as ``median (min–max, n=k)``."""
    return f"{d['median']:{fmt}} ({d['min']:{fmt}}–{d['max']:{fmt}}, n={d['n']})"


def markdown(s: dict[str, Any], parts: dict[str, dict[str, Any]]) -> str:
    c, tp, td, ts, pr, st = (parts[k] for k in ("ceiling", "train_project", "train_project_dropout",
                                               "train_seed", "predict", "statements"))
    mach = c.get("machine")
    where = ("not recorded (this results.json predates it: rerun `make bench`)" if mach is None else
             f"{mach['cpu']}, flags: "
             f"{', '.join(f for f, on in mach['flags'].items() if on) or 'no avx2'}; "
             f"`auto` picks {mach['auto']['resolved']} ({mach['auto']['reason']})")
    sizes = c.get("sizes", {"float32": 1024, "bfloat16": 512})
    lines = [
        "# Benchmarks", "",
        "Produced by `make bench` (`bench/bench.py`); raw figures in `bench/results.json` and",
        "`bench/precision.json` (`python bench/bench.py --only precision` reruns that part alone).",
        "Model: SmolLM2-135M-Instruct (embedded), 4-bit NF4 base (compute dtype as params.yaml's",
        f"`smollm2-sft`), LoRA r 16 / alpha 32 on all projections, batch {BATCH}, synthetic "
        "no-show statements.",
        "Figures: median (min–max, n repetitions).", "",
        "## Ceiling (this machine)", "", f"Machine: {where}.", "",
        "| dtype | size | matmul GFLOP/s |", "|---|---|---|",
        f"| float32 | {sizes['float32']}² | {sp(c['float32_gflops'])} |",
        f"| bfloat16 | {sizes['bfloat16']}² | {sp(c['bfloat16_gflops'])} |", "",
        "## Training", "",
        "| recipe | tokens/s | answer tokens/s | s/step | peak RSS GiB |", "|---|---|---|---|---|",
    ]
    for name, r in (("project (train stage)", tp), ("project, LoRA dropout 0.05", td),
                    ("seed-style TRL defaults", ts)):
        lines.append(f"| {name} | {sp(r['tokens_per_second'])} | "
                     f"{sp(r['answer_tokens_per_second'], '.2f')} | {sp(r['step_seconds'], '.2f')} | "
                     f"{r['peak_rss_gib']:.2f} |")
    lines += [
        "", f"Speed-up (tokens/s): **{s['train_speedup']:.1f}x**. "
        f"Model FLOPs utilisation: {s['train_gflops']:.0f} GFLOP/s = "
        f"**{100 * s['train_mfu']:.0f} %** of the best measured matmul rate "
        f"({100 * s['train_mfu_vs_bf16_ceiling']:.0f} % of the bf16 rate).", "",
        "## Prediction", "",
        "| path | rows/s |", "|---|---|",
        f"| project (predict stage) | {sp(pr['project']['rows_per_second'], '.2f')} |",
        f"| seed-style generate() per row | {sp(pr['seed']['rows_per_second'], '.2f')} |", "",
        f"Speed-up: **{s['predict_speedup']:.1f}x**; label agreement "
        f"{100 * s['predict_label_agreement']:.0f} % over {pr['seed']['rows']} rows "
        f"(adapter: {pr['adapter']}); prediction MFU {100 * s['predict_mfu']:.0f} %.", "",
        "## Data stages", "",
    ]
    if "seconds" in st:
        lines.append(f"Statements for {st['rows']:,} Kaggle rows: {sp(st['seconds'], '.2f')} s "
                     f"({st['rows_per_second']:,.0f} rows/s; reading the zip "
                     f"{st['read_seconds']:.1f} s, validation {st['validate_seconds']:.1f} s).")
    else:
        lines.append(f"Skipped: {st['skipped']}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    stm = s["statements_seconds"]
    lines += [
        "", "## Targets (issue 5) on this CPU", "",
        "| target | measured | |", "|---|---|---|",
        f"| training ≥ 4x seed-style tokens/s | {s['train_speedup']:.1f}x | "
        f"{verdict(s['train_speedup'] >= 4)} |",
        f"| training ≥ 40 % of the bf16 matmul ceiling | {100 * s['train_mfu_vs_bf16_ceiling']:.0f} % "
        f"(and {100 * s['train_mfu']:.0f} % of the fp32 rate) | "
        f"{verdict(s['train_mfu_vs_bf16_ceiling'] >= 0.4)} |",
        f"| prediction ≥ 10x the per-row generate() loop | {s['predict_speedup']:.1f}x | "
        f"{verdict(s['predict_speedup'] >= 10)} |",
        f"| statements for the Kaggle file ≤ 5 s | "
        f"{'n/a' if stm is None else f'{stm:.2f} s'} | {verdict(stm is not None and stm <= 5)} |",
        f"| train stage peak RSS ≤ 4 GiB | {s['train_peak_rss_gib']:.2f} GiB | "
        f"{verdict(s['train_peak_rss_gib'] <= 4)} |",
        "",
        "What limits prediction: the batched path already runs at "
        f"{100 * s['predict_mfu']:.0f} % of the best measured matmul rate "
        f"({'bf16' if s['bf16_gflops'] > s['fp32_gflops'] else 'fp32'}; 2 x parameters x prompt "
        "tokens), so it can get at most ~"
        f"{1 / max(s['predict_mfu'], 1e-9):.1f}x faster on this CPU. The per-row loop is not "
        f"idle: it reaches {100 * s['predict_mfu'] / s['predict_speedup']:.0f} % of that rate "
        "(its losses are 4-bit dequantization and LoRA on every call, plus the decode steps), "
        "so 10x over it would need "
        f"{10 * s['predict_mfu'] / s['predict_speedup']:.1f}x this CPU's peak. The only "
        "remaining savings are fewer tokens, and the shared "
        "prefix cache already skips the ~30 system-prompt tokens. On a GPU, where one row "
        "leaves the device idle, batching is where the 10x comes from.",
        "",
        bf16_note(c),
        "",
    ]
    lines += precision_section()
    lines.append("")
    lines += gpu_section(ROOT / "bench/gpu_results.json")
    lines += scale_out_section()
    return "\n".join(lines) + "\n"


def bf16_note(c: dict[str, Any]) -> str:
    """What the bf16 ceiling means for the MFU targets on the machine that measured it."""
    fp32, bf16 = c["float32_gflops"]["median"], c["bfloat16_gflops"]["median"]
    if bf16 < fp32:
        return ("bf16: the CPU that measured these results multiplies bf16 slower than fp32 (emulated: "
                "no AVX512-BF16/AMX; "
                "see the ceiling table), so `auto` trains in fp32 here and the meaningful "
                "figure is the share of the fp32 rate.")
    return (f"bf16: this CPU multiplies bf16 {bf16 / fp32:.1f}x faster than fp32, so `auto` "
            "computes in bf16 where params.yaml says `auto` (see the precision section).")


def precision_section() -> list[str]:
    """The float32-vs-auto section, from ``bench/precision.json`` (``bench/precision.py``)."""
    from bench.precision import markdown as precision_markdown
    return precision_markdown()


def scale_out_section() -> list[str]:
    """What the multi-process paths have (and have not) been measured on."""
    return [
        "", "## Scaling out (multi-process / DeepSpeed / FSDP / vLLM)", "",
        "Measured on CPU only, for correctness: 2 torchrun processes with gloo train sft, head "
        "and vlm (one model folder, written by rank 0), the sft update equals one process's (tests/llm/test_distributed.py, "
        "tests/methods/test_head.py, tests/methods/test_vlm.py) and shard prediction back into "
        "the single-process CSV; `dvc repro` relaunches a run with `launch.num_processes: 2` "
        "(tests/test_pipeline_e2e.py).", "",
        "**Not measured yet** (no GPU was lent to the session that built them): the "
        "Llama-3.1-8B preset with `launch.num_processes` = 1 vs DeepSpeed ZeRO-2 "
        "(`training.deepspeed=configs/deepspeed/zero2.json`) vs FSDP "
        "(`training.fsdp='full_shard auto_wrap'`, `training.fsdp_config=configs/fsdp/qlora.json`, "
        "`bnb.bnb_4bit_quant_storage=bfloat16`) tokens/s and peak memory; `predict.engine: vllm` "
        "rows/s and its agreement with the HF scorer (tests/llm/test_engine.py has the check, "
        "skipped without a GPU). Command for the next GPU session: `python bench/gpu_bench.py "
        "--out DIR --recipes project --set ...` with the settings above.",
    ]


def gpu_section(path: Path) -> list[str]:
    """The GPU part of BENCHMARKS.md, from ``bench/gpu_results.json`` (``bench/gpu_bench.py``
    on a lent GPU; it cannot be rerun by ``make bench`` on a CPU machine)."""
    head = ["## GPU (Llama-3.1-8B architecture, QLoRA)", ""]
    if not path.is_file():
        return head + [
            "Not measured: `python bench/gpu_bench.py --out DIR` on a CUDA machine builds "
            "Llama-3.1-8B's published config with random weights and trains it through the same "
            "code with the `llama31-8b-sft` preset; copy its `gpu_results.json` here."]
    g = json.loads(path.read_text())
    runs = g["runs"]

    def med(rec: dict, key: str, fmt: str = ",.0f") -> str:
        return format(rec[key]["median"], fmt)

    def mem(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    lines = head + [
        f"Measured {g['date']} on one {g['device']}; "
        + ", ".join(f"{k} {v}" for k, v in g["software"].items()) + ".",
        "Random weights in Llama-3.1-8B's published config (throughput does not depend on their "
        "values), loaded through the project's own loading code as NF4 + double quant, bf16 "
        "compute; LoRA r 16 on all projections; the `llama31-8b-sft` preset (batch 8 x "
        "accumulation 4, paged 8-bit AdamW, gradient checkpointing); synthetic no-show "
        f"statements (~109 tokens). Command: `{g['command']}`. Dense bf16 matmul rate measured "
        f"in the same run: {', '.join(med(r, 'bf16_tflops') for r in runs)} TFLOP/s.", "",
        "| run | recipe | tokens/s | s/step (32 rows) | peak GPU GiB | MFU |",
        "|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        for name, key in (("project (train stage)", "project"), ("seed-style TRL defaults", "seed")):
            x = r[key]
            mfu = 4 * r["matmul_params"] * x["tokens_per_second"]["median"] / (
                r["bf16_tflops"]["median"] * 1e12)
            lines.append(f"| {i} | {name} | {sp(x['tokens_per_second'])} | "
                         f"{sp(x['step_seconds'], '.2f')} | {mem(x.get('peak_gpu_memory_gib'))} | "
                         f"{100 * mfu:.1f} % |")
    sw = g["batch_sweep"]
    lines += ["", "Same 32 rows per optimizer step, as one micro-batch (project path; "
              f"`{sw['command']}`):", "",
              "| settings | tokens/s | s/step | peak GPU GiB | MFU |", "|---|---|---|---|---|"]
    for x in sw["results"]:
        o = ", ".join(f"{k}={v}" for k, v in x["training_overrides"].items())
        mfu = 4 * runs[-1]["matmul_params"] * x["tokens_per_second"]["median"] / (
            runs[-1]["bf16_tflops"]["median"] * 1e12)
        lines.append(f"| {o} | {sp(x['tokens_per_second'])} | {sp(x['step_seconds'], '.2f')} | "
                     f"{mem(x['peak_gpu_memory_gib'])} | {100 * mfu:.1f} % |")
    pred = [r["project"] for r in runs]
    lines += ["", "| run | predict stage rows/s | per-row generate() rows/s | speed-up | "
              "prediction peak GPU GiB |", "|---|---|---|---|---|"]
    for i, x in enumerate(pred, 1):
        gen = x["seed_generate_rows_per_second"]["median"]
        lines.append(f"| {i} | {x['predict_rows_per_second']:.0f} | {gen:.2f} | "
                     f"**{x['predict_rows_per_second'] / gen:.0f}x** | "
                     f"{x['predict_peak_gpu_memory_gib']:.1f} |")
    lines += [
        "", "Reading: on the GPU the project's training path is as fast as TRL's defaults "
        "(1.0–1.2x): at 8 rows of ~109 tokens per micro-batch the 8B model is bound by kernel "
        "launches and 4-bit dequantization, not by matmuls (under 5 % of the bf16 rate), so "
        "the CPU levers (answer-only logits, no checkpointing) hardly show. The lever here is "
        "the micro-batch: 32 rows in one pass is 3.4x faster at 11 GiB, 4.5x without gradient "
        "checkpointing at 53 GiB (`-S models.llama31-8b-sft.training.per_device_train_batch_size=32 "
        "-S models.llama31-8b-sft.training.gradient_accumulation_steps=1`); the preset keeps the "
        "seed's 8 x 4 (8.5 GiB peak). For comparison, a vendor guide "
        "(gigagpu.com, 'Fine-tune LLaMA 3 8B with LoRA') lists ~10 GB at batch 1 and ~14 GB at "
        "batch 4 for QLoRA r 16 on Llama-3-8B; the 8.5 GiB measured here at micro-batch 8 is "
        "below that thanks to checkpointing. Prediction: batched scoring beats one generate() "
        "per row by 42–109x (one timing of 512 rows per run, after a 64-row warm-up: the spread "
        "between the two runs is the honest error bar); its 28 GiB peak is the "
        "adapter merged into bf16 weights (`predict.merge_adapter`), which a 16 GB card would "
        "run with `merge_adapter: false`."]
    return lines


def previous_parts(out: Path) -> dict[str, Any]:
    """The parts ``--only`` keeps: ``out``'s results.json, else the committed
    ``bench/results.json`` (a new ``--out`` folder holds none yet); an error saying so when
    neither exists."""
    for path in (out / "results.json", ROOT / "bench" / "results.json"):
        if path.is_file():
            if path.parent != out:
                print(f"--only: the other parts come from {path} ({out} has no results.json)")
            return json.loads(path.read_text())["parts"]
    raise SystemExit(f"--only keeps the other parts from a results.json, and neither {out} nor "
                     "bench/ has one: run `make bench` (every part) first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS))
    ap.add_argument("--json", help="(internal) where a --part writes its result")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for a smoke test)")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--render", action="store_true",
                    help="rewrite BENCHMARKS.md from an existing results.json (no measuring)")
    ap.add_argument("--only", nargs="+", choices=sorted(PARTS), metavar="PART",
                    help="measure only these parts (e.g. precision, train_project predict), keep "
                         "the others from results.json, then render")
    args = ap.parse_args()
    if args.render:
        src = Path(args.out) / "results.json"
        if not src.is_file():
            raise SystemExit(f"--render: no {src} to render (run `make bench` first)")
        res = json.loads(src.read_text())
        parts = res.pop("parts")
        from clinlm.io import atomic_path
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(markdown(res, parts))
        return
    if args.part:
        res = PARTS[args.part](args.quick)
        Path(args.json).write_text(json.dumps(res, indent=2))
        return
    if not (BASE / "config.json").is_file():
        subprocess.run(["dvc", "repro", "base_model"], check=True, cwd=ROOT)
    parts = previous_parts(Path(args.out)) if args.only else {}
    parts.update({name: run_part(name, args.quick) for name in (args.only or PARTS)})
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(BASE)
    layer = (4 * cfg.hidden_size * cfg.hidden_size * (1 + cfg.num_key_value_heads
                                                      / cfg.num_attention_heads) / 2
             + 3 * cfg.hidden_size * cfg.intermediate_size)
    matmul_n = int(layer * cfg.num_hidden_layers)
    summary = summarize(parts, matmul_n)
    from clinlm.io import atomic_path, write_json
    write_json(Path(args.out) / "results.json", {**summary, "parts": parts})
    md = markdown(summary, parts)
    with atomic_path(args.markdown) as tmp:
        tmp.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
