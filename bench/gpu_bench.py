"""GPU benchmark: QLoRA on the real Llama-3.1-8B architecture (random weights), same code.

Weights are random (throughput does not depend on their values; the real checkpoint needs
a Hub token and network). The model is built from Llama-3.1-8B's published config, saved
once as bf16 safetensors, then loaded through the same ``clinlm.llm.load.load_model`` +
``BitsAndBytesConfig`` path as a real checkpoint, with the ``llama31-8b-sft`` preset of
params.yaml (NF4, double quant, bf16 compute, LoRA r 16 on all projections, batch 8 x
accumulation 4, paged 8-bit AdamW, gradient checkpointing). The tokenizer is SmolLM2's
(its ids fit Llama's 128k vocabulary); the rows are the synthetic no-show statements.

    python bench/gpu_bench.py --out DIR      # writes DIR/gpu_results.json, prints a table
    python bench/gpu_bench.py --out DIR --recipes project project-80gb zero2 fsdp --no-predict
    bash bench/gpu_issue27.sh                # the same on a device machine, wheels from .whl/

Recipes (``RECIPES``): ``project`` (the train stage's code, ``llama31-8b-sft``), ``seed`` (TRL's
defaults as the seed notebooks), ``project-80gb`` (the ``llama31-8b-sft-80gb`` preset),
``zero2`` (DeepSpeed ZeRO-2, ``configs/deepspeed/zero2.json``) and ``fsdp`` (FSDP2,
``configs/fsdp/qlora.json``, a bf16 quant storage, torch's AdamW), the last two under torchrun
with ``--nproc`` processes (1 on a one-GPU machine: their own overhead). Each recipe runs in
its own process so its peak GPU memory is its own; one that fails or outlives ``--timeout``
is recorded with its error and the next one runs. ``predict.engine: vllm`` is measured beside
the HF scorer's prediction when vllm imports, else recorded as blocked with the reason.
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
# name -> models.<preset> of params.yaml, and the sections each recipe changes in it
RECIPES: dict[str, dict[str, Any]] = {
    "project": {"preset": "llama31-8b-sft"},
    "seed": {"preset": "llama31-8b-sft"},
    "project-80gb": {"preset": "llama31-8b-sft-80gb"},
    "zero2": {"preset": "llama31-8b-sft", "torchrun": True,
              "training": {"deepspeed": str(ROOT / "configs/deepspeed/zero2.json")}},
    # optim: bitsandbytes' 8-bit optimizers (the preset's paged_adamw_8bit) reject FSDP2's
    # DTensor parameters ("got mixed torch.Tensor and DTensor"); `--set optim=...` overrides
    "fsdp": {"preset": "llama31-8b-sft", "torchrun": True,
             "training": {"fsdp": "full_shard auto_wrap", "optim": "adamw_torch",
                          "fsdp_config": str(ROOT / "configs/fsdp/qlora.json")},
             "bnb": {"bnb_4bit_quant_storage": "bfloat16"}},
}


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


def gpu_cfg(base: Path, steps: int, recipe: str = "project") -> dict[str, Any]:
    """The recipe's preset of params.yaml with its changes, on ``base``, for ``steps`` steps."""
    import copy

    from clinlm.params import load_params
    spec = RECIPES[recipe]
    cfg = copy.deepcopy(load_params(ROOT / "params.yaml")["models"][spec["preset"]])
    cfg["base"] = str(base)
    cfg["training"].update(report_to="none", max_steps=steps, logging_steps=1)
    cfg["training"].update(spec.get("training") or {})
    cfg["bnb"].update(spec.get("bnb") or {})
    return cfg


def software() -> dict[str, str | None]:
    """Versions of the packages the recipes run on (None: not importable here)."""
    from importlib.metadata import PackageNotFoundError, version
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets",
                 "accelerate", "deepspeed", "vllm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def vllm_blocked() -> str | None:
    """Why ``predict.engine: vllm`` cannot run here (None: vllm imports)."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001  (ImportError, or a broken build's own error)
        return f"vllm does not import: {e!r}"
    return None


def _train_project(df, cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """bench.py's ``_train_project``, also returning how the Trainer ran (distributed type,
    world size, the dtype of the unquantized weights)."""
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import SFTMethod

    timer = B.StepTimer()
    run = Run("noshow", "classification", "bench", cfg, out_dir, out_dir, seed=42,
              task_cfg=B.task_cfg())
    info = SFTMethod().train(run, df, extra_callbacks=[timer.callback])
    return {"step_seconds": timer.steps, "tokens": info["tokens"],
            "answer_tokens": info["answer_tokens"],
            **{k: info.get(k) for k in ("distributed", "world_size", "non_quantized_dtype",
                                        "trainable_parameters", "attn_implementation")}}


def part(recipe: str, base: Path, overrides: dict[str, Any] | None = None,
         with_predict: bool = True) -> dict[str, Any]:
    import torch

    cfg = gpu_cfg(base, STEPS, recipe)
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
            res = _train_project(df, cfg, Path(tmp))
            extra = {k: res[k] for k in ("distributed", "world_size", "non_quantized_dtype")}
            train_peak = torch.cuda.max_memory_allocated() / 2**30  # predict() resets it
            try:  # a prediction failure must not lose the training figures
                extra.update(predict(cfg, Path(tmp)) if with_predict else {})
            except Exception as e:  # noqa: BLE001
                extra["predict_error"] = repr(e)
    timed = res["step_seconds"][1:]
    per_step = res["tokens"] / STEPS
    spec = RECIPES[recipe]
    return {"recipe": recipe, "preset": spec["preset"], "training_overrides": overrides or {},
            "recipe_changes": {k: spec[k] for k in ("training", "bnb") if k in spec},
            "rows_per_step": rows_per_step, "timed_steps": len(timed),
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

    from clinlm.llm.load import load_model
    from clinlm.llm.scorer import Scorer
    from clinlm.llm.tokenizer import load_tokenizer
    from clinlm.methods.interface import Run
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
    out: dict[str, Any] = {}
    blocked = vllm_blocked()
    if blocked:
        out["vllm_blocked"] = blocked
    else:
        try:  # the same prompts on vLLM: rows/s and agreement with the HF scorer's P(Yes)
            from clinlm.llm import vllm_engine
            from clinlm.llm.scorer import first_token_ids
            ids = first_token_ids(load_tokenizer(adapter), ["Yes", "No"])
            # one call builds the merged folder and the engine, then scores: rows/s counts both
            t = time.perf_counter()
            pv = vllm_engine.choice_probs(adapter, cfg, adapter, prompts, ids)[:, 0]
            out.update(vllm_rows_per_second_with_engine_start=len(prompts)
                       / (time.perf_counter() - t),
                       vllm_max_abs_diff_p_yes=float(np.max(np.abs(pv - p))),
                       vllm_mean_abs_diff_p_yes=float(np.mean(np.abs(pv - p))),
                       vllm_same_side_of_half=float(np.mean((pv > 0.5) == (p > 0.5))))
        except Exception as e:  # noqa: BLE001
            out["vllm_error"] = repr(e)
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
            "p_yes_mean": float(np.mean(p)), **out}


def run_part(recipe: str, args: argparse.Namespace, sub: list[str]) -> dict[str, Any]:
    """Run one recipe in its own process (under torchrun when the recipe asks) and read its
    JSON; a failure or a timeout is returned as ``{"error": ...}`` with the output's tail."""
    import os
    import signal

    out = Path(args.out)
    (out / f"gpu_{recipe}.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--out", str(out), "--part", recipe, "--base", args.base, *sub]
    if RECIPES[recipe].get("torchrun"):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
               "--master-addr=127.0.0.1", "--master-port=29517", *cmd[1:]]
    log = out / f"gpu_{recipe}.log"
    t = time.perf_counter()
    with open(log, "w") as fh:  # the part's own output, kept for the error's tail
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # torchrun starts its workers in sessions of their own: kill every descendant
            import psutil
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text = log.read_text(errors="replace")
    print(text[-6000:], flush=True)
    if rc == 0 and (out / f"gpu_{recipe}.json").is_file():
        return json.loads((out / f"gpu_{recipe}.json").read_text())
    errors = [ln for ln in text.splitlines() if "Error" in ln or "error:" in ln]
    return {"recipe": recipe, "preset": RECIPES[recipe]["preset"],
            "error": (f"timed out after {args.timeout} s" if rc is None else f"exit status {rc}"),
            "error_lines": errors[-5:], "seconds": time.perf_counter() - t}


def mfu(tokens_per_second: float | None, peak_tflops: float, k: int = 4) -> float | None:
    """Model FLOP utilisation: ``k`` x matmul parameters x tokens/s over the measured bf16 rate
    (k = 4 for training with a frozen base: forward + input gradients; 2 for a forward)."""
    return k * MATMUL_PARAMS * tokens_per_second / (peak_tflops * 1e12) if tokens_per_second else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=str(B.BASE))
    ap.add_argument("--part", choices=list(RECIPES))
    ap.add_argument("--base", default="/tmp/llama31-8b-random")
    ap.add_argument("--recipes", nargs="+", default=["project", "seed"], choices=list(RECIPES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="training override for every recipe, e.g. per_device_train_batch_size=32")
    ap.add_argument("--no-predict", action="store_true", help="training figures only")
    ap.add_argument("--nproc", type=int, default=1, help="processes of the torchrun recipes")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per recipe")
    args = ap.parse_args()
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    sub = [f"--set={kv}" for kv in args.set] + (["--no-predict"] if args.no_predict else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        res = part(args.part, Path(args.base), overrides, not args.no_predict)
        import os
        if int(os.environ.get("RANK", 0)) == 0:
            (out / f"gpu_{args.part}.json").write_text(json.dumps(res, indent=2))
        return
    base = Path(args.base)
    t = time.perf_counter()
    if not (base / "config.json").is_file():
        build_random(base, Path(args.tokenizer))
    results: dict[str, Any] = {"build_seconds": time.perf_counter() - t, "config": LLAMA31_8B,
                               "matmul_params": MATMUL_PARAMS, "software": software(),
                               "vllm_blocked": vllm_blocked()}
    import torch
    results["bf16_tflops"] = bf16_ceiling()
    print("bf16 TFLOP/s", results["bf16_tflops"], flush=True)
    torch.cuda.empty_cache()
    peak = results["bf16_tflops"]["median"]
    for recipe in args.recipes:
        res = run_part(recipe, args, sub)
        if "tokens_per_second" in res:
            res["mfu"] = mfu(res["tokens_per_second"]["median"], peak)
        results[recipe] = res
        print(json.dumps(res, indent=1), flush=True)
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    proj, seed = results.get("project", {}), results.get("seed", {})
    if "tokens_per_second" in proj and "tokens_per_second" in seed:
        results["train_speedup"] = (proj["tokens_per_second"]["median"]
                                    / seed["tokens_per_second"]["median"])
        results["train_mfu"], results["seed_train_mfu"] = proj["mfu"], seed["mfu"]
    if proj.get("predict_prompt_tokens_per_second"):
        # prediction counts every prompt token (the shared-prefix cache skips some: an upper bound)
        results["predict_mfu"] = mfu(proj["predict_prompt_tokens_per_second"], peak, 2)
    if proj.get("seed_generate_rows_per_second"):
        results["predict_speedup"] = (proj["predict_rows_per_second"]
                                      / proj["seed_generate_rows_per_second"]["median"])
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    print({r: (results[r].get("tokens_per_second", {}).get("median"), results[r].get("mfu"),
               results[r].get("peak_gpu_memory_gib"), results[r].get("error"))
           for r in args.recipes})
    print({k: results.get(k) for k in ("train_speedup", "train_mfu", "seed_train_mfu",
                                       "predict_speedup", "predict_mfu", "vllm_blocked")})


if __name__ == "__main__":
    main()
