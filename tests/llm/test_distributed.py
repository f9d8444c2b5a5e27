"""The engine under torchrun: 2 CPU processes (gloo), tiny models, the real method code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import YES_NO_TASK, run_distributed, tiny_sft_cfg, waits_rows

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # torchrun starts 2 processes per test (~30 s each on 2 cores)
TASK = YES_NO_TASK



def _rows(n: int = 16) -> pd.DataFrame:
    return waits_rows(n)


def _run(cfg: dict, tmp_path, name: str, task_type: str = "classification") -> dict:
    return {"task": "noshow", "task_type": task_type, "model": name, "cfg": cfg,
            "model_dir": tmp_path / name, "data_dir": tmp_path, "seed": 3, "task_cfg": TASK}


def test_ddp_sft_trains_once_and_only_rank0_writes(tiny_llama, tmp_path):
    cfg = tiny_sft_cfg(tiny_llama, epochs=3)
    cfg["training"]["per_device_train_batch_size"] = 4
    ranks = run_distributed(tmp_path, _run(cfg, tmp_path, "sft"), _rows(16))
    info = ranks[0]["info"]
    assert info["world_size"] == 2 and ranks[1]["world_size"] == 2
    assert info["steps"] == 6  # 16 rows / (2 processes x 4) = 2 steps an epoch: each row once
    assert info["last_loss"] < info["first_loss"]
    assert ranks[0]["written"] and not ranks[1]["written"]  # one writer
    assert (tmp_path / "sft" / "adapter_model.safetensors").exists()
    assert set(info["peak_memory_gib"]) == {"rank0", "rank1"}  # per device, every process




def test_two_processes_compute_the_single_process_update(tiny_llama, tmp_path):
    """2 processes x batch 4 == 1 process x batch 8: same rows per step, the loss divided by
    the step's answer-token count over both processes (float64: no rounding noise)."""
    import torch
    from safetensors.torch import load_file

    ages = [7, 104, 55, 9, 101, 33, 8, 99, 61, 110, 5, 47, 102, 6, 73, 100]  # 2-4 answer tokens
    rows = pd.DataFrame({"id": [str(i) for i in range(16)], "group": [str(i) for i in range(16)],
                         "statement": [f"Case {i}." for i in range(16)], "label": ages})
    weights = {}
    for name, processes, batch in (("one", 1, 8), ("two", 2, 4)):
        cfg = tiny_sft_cfg(tiny_llama, epochs=1, dtype="float64")
        cfg["training"].update(per_device_train_batch_size=batch, learning_rate=0.05,
                               lr_scheduler_type="constant", optim="sgd")
        run = _run(cfg, tmp_path, name, "regression")
        run["task"] = "vascular_age"
        ranks = run_distributed(tmp_path, run, rows, processes=processes, name=name)
        if processes > 1:
            assert ranks[0]["info"]["distributed"] == "MULTI_CPU"  # DDP over gloo
        weights[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    assert weights["one"].keys() == weights["two"].keys()
    for k in weights["one"]:
        torch.testing.assert_close(weights["two"][k], weights["one"][k], rtol=1e-4, atol=1e-8)
    assert any(w.abs().max() > 0 for k, w in weights["one"].items() if "lora_B" in k)


def test_sharded_prediction_equals_single_process(tiny_llama, tmp_path):
    from clinlm.methods.interface import Run
    from clinlm.methods.sft import SFTMethod
    from clinlm.predict import predict_table

    cfg = tiny_sft_cfg(tiny_llama, epochs=1)
    run = _run(cfg, tmp_path, "p")
    rows = _rows(13)  # not a multiple of 2: uneven shards
    SFTMethod().train(Run(**run), rows)
    single = predict_table(Run(**run), rows)
    ranks = run_distributed(tmp_path, run, rows, train=False, predict=True)
    for r in ranks:  # every process gets every row back, in input order
        got = pd.DataFrame(r["predictions"])
        assert got["id"].tolist() == rows["id"].tolist()
        np.testing.assert_allclose(got["p_yes"], single["p_yes"], rtol=1e-5, atol=1e-6)
        assert got["y_pred"].tolist() == single["y_pred"].tolist()
    assert not ranks[1]["written"]
