"""GPU benchmark: QLoRA on the real Llama-3.1-8B architecture (random weights), same code.

Weights are random (throughput does not depend on their values; the real checkpoint needs
a Hub token and network). The model is built from Llama-3.1-8B's published config, saved
once as bf16 safetensors, then loaded through the same ``hf.load_causal_lm`` +
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
from bench import bench as B  # noqa: E402

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
PREDICT_ROWS = 512
GENERATE_ROWS = 16


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


def part(recipe: str, base: Path) -> dict[str, Any]:
    import torch

    cfg = gpu_cfg(base, STEPS)
    tr = cfg["training"]
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
        else:
            res = B._train_project(df, cfg, STEPS, Path(tmp))
            extra = predict(cfg, Path(tmp))
    timed = res["step_seconds"][1:]
    per_step = res["tokens"] / STEPS
    return {"recipe": recipe, "rows_per_step": rows_per_step, "timed_steps": len(timed),
            "step_seconds": B.spread(timed),
            "tokens_per_second": B.spread([per_step / s for s in timed]),
            "answer_tokens_per_second": B.spread([res["answer_tokens"] / STEPS / s for s in timed]),
            "tokens_per_step": per_step,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "wall_seconds": time.perf_counter() - t0, "gpu": torch.cuda.get_device_name(), **extra}


def predict(cfg: dict[str, Any], adapter: Path) -> dict[str, Any]:
    """Rows/s of the predict stage code vs one generate() per row, on the trained adapter."""
    import numpy as np
    import torch
    from peft import PeftModel

    from clinlm import hf
    from clinlm.methods.sft import prompt_texts
    from clinlm.scoring import AnswerScorer

    df = B.rows(PREDICT_ROWS, seed=3)
    torch.cuda.reset_peak_memory_stats()
    scorer = AnswerScorer.from_adapter(adapter, cfg)
    prompts = prompt_texts(scorer.tok, df["statement"].tolist(), B.task_cfg())
    scorer.choice_probs(prompts[:64], ["Yes", "No"])
    torch.cuda.synchronize()
    t = time.perf_counter()
    p = scorer.choice_probs(prompts, ["Yes", "No"])[:, 0]
    torch.cuda.synchronize()
    batched = len(prompts) / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() / 2**30
    del scorer
    torch.cuda.empty_cache()
    tok = hf.load_tokenizer(str(adapter), padding_side="left")
    model = PeftModel.from_pretrained(hf.load_causal_lm(cfg["base"], cfg["bnb"], "bfloat16"),
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
            "seed_generate_rows_per_second": B.spread([1 / x for x in times[1:]]),
            "p_yes_mean": float(np.mean(p))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=str(B.BASE))
    ap.add_argument("--part", choices=["project", "seed"])
    ap.add_argument("--base", default="/tmp/llama31-8b-random")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        (out / f"gpu_{args.part}.json").write_text(json.dumps(part(args.part, Path(args.base)),
                                                              indent=2))
        return
    base = Path(args.base)
    t = time.perf_counter()
    if not (base / "config.json").is_file():
        build_random(base, Path(args.tokenizer))
    results: dict[str, Any] = {"build_seconds": time.perf_counter() - t, "config": LLAMA31_8B}
    for recipe in ("project", "seed"):
        subprocess.run([sys.executable, __file__, "--out", str(out), "--part", recipe,
                        "--base", str(base)], check=True)
        results[recipe] = json.loads((out / f"gpu_{recipe}.json").read_text())
        print(json.dumps(results[recipe], indent=1), flush=True)
    results["train_speedup"] = (results["project"]["tokens_per_second"]["median"]
                                / results["seed"]["tokens_per_second"]["median"])
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    print("train_speedup", results["train_speedup"])


if __name__ == "__main__":
    main()
