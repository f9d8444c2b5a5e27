"""Shared fixtures: paths to the real data beside the repo and a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _forget_run_size():
    """A test process trains several runs: `auto` precision must not keep the last one's
    size (clinlm.llm.precision.plan)."""
    yield
    from clinlm.llm.precision import clear_plan
    clear_plan()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random-weight Llama saved with the real SmolLM2 tokenizer (fast CPU tests).

    The tokenizer comes from the embedded GGUF, so chat template and token ids are real.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from clinlm.base_model import embedded_gguf

    out = tmp_path_factory.mktemp("tiny_llama")
    gguf = embedded_gguf("embedded:smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id or tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


TINY_BASE = "tiny-llama"  # the base_models entry on_tiny_base adds to an end-to-end project


def on_tiny_base(params: dict, tiny: Path, *, keep_embedded: bool = True) -> None:
    """Point an end-to-end project's LLM runs (``params``, edited in place) at ``tiny`` (the
    ``tiny_llama`` folder), materialized by the real ``base_model`` stage as a local folder,
    and compose the VLM base around it: the same stages, DVC graph, methods and files as the
    default runs, in seconds instead of minutes per stage (the 135M model's compute is not
    what these tests check). ``keep_embedded``: keep the GGUF base entry, so its stage still
    materializes the real SmolLM2 (test_pipeline_e2e checks that folder); else drop it."""
    base = f"data/models/base/{TINY_BASE}"
    embedded = [n for n, b in params["base_models"].items() if b["source"].startswith("embedded:")]
    params["base_models"][TINY_BASE] = {"source": str(tiny), "dtype": "float32"}
    if not keep_embedded:
        for name in embedded:
            del params["base_models"][name]
    for vlm in (params.get("vlm_bases") or {}).values():
        vlm["text_model"] = TINY_BASE
    for method in ("sft", "head"):
        for run in (params["runs"].get(method) or {}).values():
            params["models"][run["model"]]["base"] = base
            run["base"] = TINY_BASE


YES_NO_TASK = {"prompt": {"system": "Answer Yes or No.", "question": "Will the patient miss it?"}}


def waits_rows(n: int = 16):
    """``n`` learnable no-show rows: a long wait means Yes (seeded)."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    wait = rng.integers(0, 40, n)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "group": [str(i) for i in range(n)],
                         "statement": [f"Booked {w} days ahead." for w in wait],
                         "label": np.where(wait > 20, "Yes", "No")})


def tiny_sft_cfg(base, *, epochs: int = 2, predict_batch_size: int = 4, **extra) -> dict:
    """A ``method: sft`` model entry sized for the tiny test models (fp32, no 4-bit, LoRA r 4)."""
    cfg = {"method": "sft", "base": str(base), "dtype": "float32", "max_train_rows": None,
           "bnb": {"load_in_4bit": False},
           "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                    "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"},
           "sft": {"max_length": 128, "completion_only_loss": True},
           "training": {"num_train_epochs": epochs, "per_device_train_batch_size": 8,
                        "learning_rate": 0.01, "logging_steps": 1, "save_strategy": "no",
                        "report_to": "none"},
           "predict": {"batch_size": predict_batch_size, "autocast_dtype": None}}
    cfg.update(extra)
    return cfg


def _under(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """``path`` is one of ``prefixes`` or inside one of those folders."""
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in prefixes)


def copy_checkout(dst: Path, skip: tuple[str, ...] = ("dvc.lock",),
                  only: tuple[str, ...] | list[str] | None = None) -> Path:
    """Copy the working tree's files (tracked + untracked, not ignored) to ``dst``, without
    ``skip`` (paths or folder prefixes), and only those under ``only`` when given: a scratch
    project for end-to-end `dvc repro` tests."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not _under(f, skip) and (only is None or _under(f, only)):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(tmp_path: Path, run: dict, rows, *, processes: int = 2, train: bool = True,
                    predict: bool = False, name: str = "dist") -> list[dict]:
    """Train and/or predict ``run`` (Run fields) on ``rows`` through the real method code in
    ``processes`` CPU processes under torchrun (gloo); returns each rank's report
    (tests/dist_worker.py)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / f"{name}-out"
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"run": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in run.items()},
                                "rows": rows.to_dict(orient="records"), "train": train,
                                "predict": predict, "watch": str(run["model_dir"]),
                                "out": str(out)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
           f"--master-port={free_port()}", str(ROOT / "tests" / "dist_worker.py"), str(spec)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(processes)]



#: the synthetic multiclass table (issue 28): a heart rhythm from ECG measurements; two
#: labels' answers share their first word ("atrial ..."), so reading the first token alone
#: could not tell them apart
RHYTHM_TEXTS = {"SR": "sinus rhythm", "AF": "atrial fibrillation", "AFL": "atrial flutter"}


def rhythm_frame(n: int = 150, seed: int = 0):
    """``n`` ECG-like rows whose rhythm (SR / AF / AFL) the measurements tell: AF has an
    irregular RR interval and no P wave, AFL a regular fast rate with flutter waves."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(seed)
    rhythm = rng.choice(["SR", "AF", "AFL"], n, p=[0.5, 0.3, 0.2])
    rr_sd = np.where(rhythm == "AF", rng.normal(140, 30, n), rng.normal(30, 10, n)).clip(5)
    rate = np.where(rhythm == "AFL", rng.normal(150, 8, n), rng.normal(85, 15, n)).round()
    p_wave = np.where(rhythm == "SR", rng.choice(["present", "absent"], n, p=[0.95, 0.05]),
                      rng.choice(["present", "absent"], n, p=[0.1, 0.9]))
    return pd.DataFrame({"record": [f"r{i:04d}" for i in range(n)],
                         "patient": [f"p{i // 2:04d}" for i in range(n)],
                         "heart_rate": rate, "rr_sd_ms": rr_sd.round(1), "p_wave": p_wave,
                         "age": rng.integers(30, 90, n), "rhythm": rhythm})


def rhythm_task(csv_path, **answer) -> dict:
    """A ``kind: table`` multiclass task over :func:`rhythm_frame` written to ``csv_path``."""
    return {"kind": "table", "type": "multiclass",
            "answer": answer or {"labels": dict(RHYTHM_TEXTS)},
            "prompt": {"system": "Name the heart rhythm.",
                       "question": "Which rhythm is this: sinus rhythm, atrial fibrillation "
                                   "or atrial flutter?"},
            "download": {"source": "csv", "csv_path": str(csv_path), "id_column": "record",
                         "group_column": "patient", "target_column": "rhythm",
                         "columns": {"heart_rate": {"label": "heart rate", "unit": "bpm"},
                                     "rr_sd_ms": {"label": "RR interval SD", "unit": "ms"}},
                         "include": ["*"]}}
