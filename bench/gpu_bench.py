"""GPU benchmark: QLoRA on the real Llama-3.1-8B architecture (random weights), same code.

Weights are random (throughput does not depend on their values; the real checkpoint needs
a Hub token and network). The model is built from Llama-3.1-8B's published config, saved
once as bf16 safetensors, then loaded through the same ``clinlm.llm.load.load_model`` +
``BitsAndBytesConfig`` path as a real checkpoint, with the ``llama31-8b-sft`` preset of
params.yaml (NF4, double quant, bf16 compute, LoRA r 16 on all projections, batch 8 x
accumulation 4, paged 8-bit AdamW, gradient checkpointing). The tokenizer is SmolLM2's
(its ids fit Llama's 128k vocabulary); the rows are the synthetic no-show statements.

    python bench/gpu_bench.py --out DIR      # writes DIR/gpu_results.json, prints a table

Each recipe runs in its own process so its peak GPU memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bench as B  # noqa: E402  (bench/bench.py: this folder is sys.path[0])

# https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
                  tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
                  rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192})
STEPS = 6          # optimizer steps (first one is warm-up)
# matmul weights of the config (attention + MLP of every layer, lm_head): the FLOP count of
# one token is ~2x this forward, ~4x forward + backward with the base frozen (no weight grads)
_C = LLAMA31_8B
_KV = _C["hidden_size"] // _C["num_attention_heads"] * _C["num_key_value_heads"]
MATMUL_PARAMS = (_C["num_hidden_layers"] * (2 * _C["hidden_size"] ** 2 + 2 * _C["hidden_size"] * _KV
                                            + 3 * _C["hidden_size"] * _C["intermediate_size"])
                 + _C["hidden_size"] * _C["vocab_size"])
PREDICT_ROWS = 512
GENERATE_ROWS = 16


def bf16_ceiling() -> dict[str, Any]:
    """The GPU's dense bf16 matmul rate (8192^3 products, after warm-up), TFLOP/s."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        rates.append(2 * n**3 * 10 / (time.perf_counter() - t) / 1e12)
    return B.spread(rates)


def build_random(out: Path, tokenizer: Path) -> None:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA31_8B))
    model.save_pretrained(out, max_shard_size="5GB")
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)


def gpu_cfg(base: Path, steps: int) -> dict[str, Any]:
    import copy

    from clinlm.params import load_params
    cfg = copy.deepcopy(load_params(ROOT / "params.yaml")["models"]["llama31-8b-sft"])
    cfg["base"] = str(base)
    cfg["training"].update(report_to="none", max_steps=steps, logging_steps=1)
    return cfg


def part(recipe: str, base: Path, overrides: dict[str, Any] | None = None,
         with_predict: bool = True) -> dict[str, Any]:
    import torch

    cfg = gpu_cfg(base, STEPS)
    tr = cfg["training"]
    tr.update(overrides or {})
    rows_per_step = tr["per_device_train_batch_size"] * tr["gradient_accumulation_steps"]
    df = B.rows(rows_per_step * STEPS)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if recipe == "seed":
            res = B._train_seed(df, cfg, STEPS, Path(tmp), bf16=True, dtype="bfloat16",
                                per_device_train_batch_size=tr["per_device_train_batch_size"],
                                gradient_accumulation_steps=tr["gradient_accumulation_steps"],
                                optim=tr["optim"])
            extra = {}
            train_peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            res = B._train_project(df, cfg, STEPS, Path(tmp))
            train_peak = torch.cuda.max_memory_allocated() / 2**30  # predict() resets it
            try:  # a prediction failure must not lose the training figures
                extra = predict(cfg, Path(tmp)) if with_predict else {}
            except Exception as e:  # noqa: BLE001
                extra = {"predict_error": repr(e)}
    timed = res["step_seconds"][1:]
    per_step = res["tokens"] / STEPS
    return {"recipe": recipe, "training_overrides": overrides or {}, "rows_per_step": rows_per_step, "timed_steps": len(timed),
            "step_seconds": B.spread(timed),
            "tokens_per_second": B.spread([per_step / s for s in timed]),
            "answer_tokens_per_second": B.spread([res["answer_tokens"] / STEPS / s for s in timed]),
            "tokens_per_step": per_step,
            "peak_gpu_memory_gib": train_peak,
            "wall_seconds": time.perf_counter() - t0, "gpu": torch.cuda.get_device_name(), **extra}


def predict(cfg: dict[str, Any], adapter: Path) -> dict[str, Any]:
    """Rows/s of the predict stage code vs one generate() per row, on the trained adapter."""
    import numpy as np
    import torch
    from peft import PeftModel

    from clinlm.llm.load import load_model, load_tokenizer
    from clinlm.llm.scorer import Scorer
    from clinlm.methods.base import Run
    from clinlm.methods.sft import prompt_texts

    df = B.rows(PREDICT_ROWS, seed=3)
    torch.cuda.reset_peak_memory_stats()
    scorer = Scorer.from_run(adapter, Run("noshow", "classification", "gpu", cfg, adapter,
                                          adapter).cfg)
    prompts = prompt_texts(scorer.tok, df["statement"].tolist(), B.task_cfg())
    scorer.choice_probs(prompts[:64], ["Yes", "No"])
    torch.cuda.synchronize()
    t = time.perf_counter()
    p = scorer.choice_probs(prompts, ["Yes", "No"])[:, 0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    batched = len(prompts) / seconds
    n_tok = sum(len(x) for x in scorer.tok(prompts, add_special_tokens=False)["input_ids"])
    mem = torch.cuda.max_memory_allocated() / 2**30
    del scorer
    torch.cuda.empty_cache()
    tok = load_tokenizer(adapter, padding_side="left")
    model = PeftModel.from_pretrained(load_model({**cfg, "dtype": "bfloat16"}, "causal"),
                                      str(adapter)).eval()
    times = []
    with torch.inference_mode():
        for prompt in prompts[:GENERATE_ROWS]:
            torch.cuda.synchronize()
            t = time.perf_counter()
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to("cuda")
            model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return {"predict_rows_per_second": batched, "predict_peak_gpu_memory_gib": mem,
            "predict_prompt_tokens_per_second": n_tok / seconds,
            "seed_generate_rows_per_second": B.spread([1 / x for x in times[1:]]),
            "p_yes_mean": float(np.mean(p))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=str(B.BASE))
    ap.add_argument("--part", choices=["project", "seed"])
    ap.add_argument("--base", default="/tmp/llama31-8b-random")
    ap.add_argument("--recipes", nargs="+", default=["project", "seed"],
                    choices=["project", "seed"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="training override for both recipes, e.g. per_device_train_batch_size=32")
    ap.add_argument("--no-predict", action="store_true", help="training figures only")
    args = ap.parse_args()
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    sub = [f"--set={kv}" for kv in args.set] + (["--no-predict"] if args.no_predict else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        res = part(args.part, Path(args.base), overrides, not args.no_predict)
        (out / f"gpu_{args.part}.json").write_text(json.dumps(res, indent=2))
        return
    base = Path(args.base)
    t = time.perf_counter()
    if not (base / "config.json").is_file():
        build_random(base, Path(args.tokenizer))
    results: dict[str, Any] = {"build_seconds": time.perf_counter() - t, "config": LLAMA31_8B,
                               "matmul_params": MATMUL_PARAMS}
    import torch
    results["bf16_tflops"] = bf16_ceiling()
    print("bf16 TFLOP/s", results["bf16_tflops"], flush=True)
    torch.cuda.empty_cache()
    for recipe in args.recipes:
        rc = subprocess.run([sys.executable, __file__, "--out", str(out), "--part", recipe,
                             "--base", str(base), *sub]).returncode
        if rc != 0:  # keep what the other recipe measured
            results[recipe] = {"error": f"exit status {rc}"}
            continue
        results[recipe] = json.loads((out / f"gpu_{recipe}.json").read_text())
        print(json.dumps(results[recipe], indent=1), flush=True)
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    if any("error" in results[r] for r in args.recipes) or len(args.recipes) < 2:
        print("one recipe only, or one failed: partial results in", out / "gpu_results.json")
        return
    proj, seed, peak = results["project"], results["seed"], results["bf16_tflops"]["median"]
    results["train_speedup"] = (proj["tokens_per_second"]["median"]
                                / seed["tokens_per_second"]["median"])
    # prediction counts every prompt token (the shared-prefix cache skips some: an upper bound)
    for name, tps, k in (("train_mfu", proj["tokens_per_second"]["median"], 4),
                         ("seed_train_mfu", seed["tokens_per_second"]["median"], 4),
                         ("predict_mfu", proj.get("predict_prompt_tokens_per_second"), 2)):
        results[name] = k * MATMUL_PARAMS * tps / (peak * 1e12) if tps else None
    if proj.get("seed_generate_rows_per_second"):
        results["predict_speedup"] = (proj["predict_rows_per_second"]
                                      / proj["seed_generate_rows_per_second"]["median"])
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    print({k: results.get(k) for k in ("train_speedup", "train_mfu", "seed_train_mfu",
                                       "predict_speedup", "predict_mfu")})


if __name__ == "__main__":
    main()
