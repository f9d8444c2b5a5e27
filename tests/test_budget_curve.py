"""bench/budget_curve.py on the tiny random Llama: checkpoints by rows seen, the budget stop,
resume after a kill (training and scoring), the results file's fields."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.budget_curve import Results, apply_overrides, predict_chunks, run_curve, variant_run
from clinlm.methods import get_method
from clinlm.methods.interface import Run
from clinlm.noshow.statements import build_statements
from clinlm.noshow.synthetic import generate_synthetic
from tests.conftest import YES_NO_TASK, tiny_sft_cfg

TASK = YES_NO_TASK
ROWS = 48          # the schedule's rows: 12 steps of 4
CHECKPOINTS = [16, 32]


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real no-show statements (compact: short prompts) with f_* features for gbdt."""
    table = build_statements(generate_synthetic(300, seed=5), style="compact")
    return table.iloc[:200].reset_index(drop=True), table.iloc[200:240].reset_index(drop=True)


def _runs(base: Path, work: Path) -> tuple[Run, Run]:
    # QLoRA as the CPU default: 4-bit base, bf16 compute, so the adapters train in bf16
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
           "bnb_4bit_compute_dtype": "bfloat16"}
    cfg = tiny_sft_cfg(base, epochs=1, predict_batch_size=8, bnb=bnb)
    cfg["training"].update(per_device_train_batch_size=4, learning_rate=0.005)
    lrun = Run("noshow", "classification", "tiny", cfg, work / "model", work, seed=1, task_cfg=TASK)
    brun = variant_run(lrun, work / "gbdt", model="gbdt", cfg={"method": "gbdt"})
    return lrun, brun


def _curve(base, work, split, budget_minutes=60.0, extra_callbacks=None, **kw):
    lrun, brun = _runs(base, work)
    return run_curve(lrun, brun, *split, out=work / "curve.json", max_rows=ROWS,
                     checkpoints=CHECKPOINTS, budget_minutes=budget_minutes, eval_rows=20,
                     final_eval="all", n_boot=200, chunk_rows=15, extra_callbacks=extra_callbacks,
                     **kw)


def _adapter(point_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(point_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def full(tiny_llama, split, tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("curve")
    return _curve(tiny_llama, work, split), work


@pytest.mark.slow
def test_checkpoints_at_rows_seen_scored_against_the_baseline(full):
    import torch
    data, work = full
    pts = data["points"]
    assert [p["step"] for p in pts] == [4, 8, 12]
    assert [p["rows_seen"] for p in pts] == [16, 32, 48]
    assert [p["labels"] for p in pts] == [["16"], ["32"], ["final"]]
    for p in pts:
        d = Path(p["dir"])
        assert (d / "adapter_model.safetensors").exists() and not (d / "optimizer.pt").exists()
        assert p["tokens_seen"] > 0 and p["tokens_per_second"] > 0
    first, last = _adapter(Path(pts[0]["dir"])), _adapter(Path(pts[-1]["dir"]))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # trained on in between
    tr = data["training"]
    assert tr["done"] and tr["stopped_by"] == "rows" and tr["max_steps"] == 12
    assert tr["planned_rows"] == ROWS and "planned for all 12 steps" in tr["note"]
    assert tr["torch_threads"] >= 1 and tr["precision"]["resolved"]
    assert not (work / "model" / "checkpoints").exists()  # fit cleaned up at the end
    for p in pts:
        assert set(p["scores"]) == ({"eval", "all"} if "final" in p["labels"] else {"eval"})
        for which, s in p["scores"].items():
            assert s["n_rows"] == {"eval": 20, "all": 40}[which]
            for m in ("roc_auc", "pr_auc"):
                lo, hi = s[f"{m}_ci95"]
                assert 0 <= lo <= s[m] <= hi <= 1
                d = s["vs_baseline"][m]
                assert d["diff"] == pytest.approx(s[m] - s["baseline"][m])
                assert d["verdict"] in ("better", "worse", "no difference")
    # the final point's eval figures are its whole-test predictions restricted to the eval rows
    final = pts[-1]
    assert len(pd.read_csv(Path(final["dir"]) / "pred_all.csv")) == 40
    assert not (Path(final["dir"]) / "pred_eval.csv").exists()
    # the files: JSON with the machine facts, markdown table
    saved = json.loads((work / "curve.json").read_text())
    assert saved["machine"]["cpu"] and saved["machine"]["cores"] >= 1
    assert saved["machine"]["precision"]["resolved"] and saved["baseline"]["n_train"] == 200
    assert saved["spec"]["max_rows"] == ROWS and saved["spec"]["checkpoints"] == CHECKPOINTS
    md = (work / "curve.md").read_text()
    assert "| 16 | 16 |" in md and "| final | 48 |" in md and md.count("\n| ") == 5


@pytest.mark.slow
def test_stack_on_the_final_point_fitted_on_rows_the_llm_never_saw(tiny_llama, split, full,
                                                                    monkeypatch):
    from clinlm.methods.interface import subsample
    _, work = full
    data = _curve(tiny_llama, work, split, stack_holdout=60, score_threads=1)
    st, (train, test) = data["stack"], split
    lrun, _ = _runs(tiny_llama, work)
    seen = set(subsample(train, ROWS, lrun.seed, lrun.task_type)["id"].astype(str))
    held = pd.read_csv(work / "stack" / "llm_holdout.csv", dtype={"id": str})
    oof = pd.read_csv(work / "stack" / "baseline_oof.csv", dtype={"id": str})
    assert len(held) == 60 and held["id"].tolist() == oof["id"].tolist()
    assert not set(held["id"]) & seen and not set(held["id"]) & set(test["id"].astype(str))
    assert set(held["id"]) <= set(train["id"].astype(str))
    assert st["n_holdout"] == 60 and st["n_llm_train_rows"] == ROWS and st["folds"] == 5
    lo, hi = st["llm_coef"]["ci95"]
    assert lo <= st["llm_coef"]["value"] <= hi and st["llm_coef"]["verdict"]
    s = st["test"]["all"]  # the final point's whole-test predictions, combined
    assert s["n_rows"] == 40 and 0 <= s["roc_auc"] <= 1 and "diff" in s["vs_baseline"]["roc_auc"]
    pred = pd.read_csv(work / "stack" / "stack_all.csv", dtype={"id": str})
    assert pred["id"].tolist() == test["id"].astype(str).tolist() and pred["p_yes"].between(0, 1).all()
    assert "| stack (final + gbdt) |" in (work / "curve.md").read_text()

    # done once: a rerun trains, scores and refits nothing
    def boom(*a, **k):
        raise AssertionError("nothing should run again")
    monkeypatch.setattr("clinlm.predict.predict_table", boom)
    monkeypatch.setattr("clinlm.methods.stack.baseline_oof", boom)
    assert _curve(tiny_llama, work, split, stack_holdout=60)["stack"] == st


@pytest.mark.slow
def test_budget_stop_saves_and_scores_a_final_checkpoint(tiny_llama, split, tmp_path):
    data = _curve(tiny_llama, tmp_path, split, budget_minutes=0.0)
    (p,) = data["points"]  # stopped after the first step, before the 16-row checkpoint
    assert p["step"] == 1 and p["labels"] == ["final"] and p["rows_seen"] == 4
    tr = data["training"]
    assert tr["stopped_by"] == "budget" and tr["max_steps"] == 12  # planned for all rows
    assert p["scores"]["all"]["n_rows"] == 40 and p["scores"]["eval"]["n_rows"] == 20


class Killed(Exception):
    pass


def _kill_after_step(step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed(f"killed after the checkpoint of step {step}")

    return Kill()


@pytest.mark.slow
def test_resume_continues_training_and_skips_finished_points(tiny_llama, split, tmp_path,
                                                             full, monkeypatch):
    import torch
    with pytest.raises(Killed):
        _curve(tiny_llama, tmp_path, split, extra_callbacks=[_kill_after_step(8)])
    half = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in half["points"]] == [4, 8] and not half["training"]["done"]
    ckpts = sorted(p.name for p in (tmp_path / "model" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-8"]  # only the newest is kept

    data = _curve(tiny_llama, tmp_path, split)
    assert [p["step"] for p in data["points"]] == [4, 8, 12]
    assert [s["resumed_from_step"] for s in data["training"]["sessions"]] == [0, 8]
    # the Trainer's resume (optimizer, schedule, data order): the same weights as one run
    resumed, straight = _adapter(Path(data["points"][-1]["dir"])), _adapter(
        Path(full[0]["points"][-1]["dir"]))
    for k in straight:  # same dtype too: the resume did not upcast the bf16 adapters
        assert resumed[k].dtype == straight[k].dtype == torch.bfloat16
        torch.testing.assert_close(resumed[k], straight[k], atol=0, rtol=0)
    assert data["points"][-1]["train_seconds"] >= data["points"][1]["train_seconds"]

    # a third call trains and scores nothing
    def boom(*a, **k):
        raise AssertionError("nothing should run again")
    monkeypatch.setattr("clinlm.predict.predict_table", boom)
    monkeypatch.setattr(type(get_method("sft")), "train", boom)
    again = _curve(tiny_llama, tmp_path, split)
    assert again["points"] == data["points"]


def test_chunked_scoring_resumes_after_the_last_chunk(split, tmp_path, monkeypatch):
    train, test = split
    _, brun = _runs(Path("unused"), tmp_path)
    get_method("gbdt").train(brun, train)
    path = tmp_path / "pred.csv"

    def kill():
        raise Killed

    with pytest.raises(Killed):
        predict_chunks(brun, test, path, 15, 0.5, on_chunk=kill)
    assert len(pd.read_csv(path)) == 15
    import clinlm.predict
    real, seen = clinlm.predict.predict_table, []

    def counting(run, df, threshold=0.5):
        seen.append(len(df))
        return real(run, df, threshold)
    monkeypatch.setattr(clinlm.predict, "predict_table", counting)
    pred = predict_chunks(brun, test, path, 15, 0.5)
    assert seen == [15, 10]  # rows 15..39 only
    pd.testing.assert_frame_equal(pred, real(brun, test, 0.5))


def test_other_settings_refuse_to_resume_and_overrides(tmp_path):
    Results(tmp_path / "r.json", {"run": "a", "max_rows": 10}).save()
    with pytest.raises(SystemExit, match="max_rows: 10 -> 20"):
        Results(tmp_path / "r.json", {"run": "a", "max_rows": 20})
    params = {"models": {"m": {"training": {"save_strategy": "steps"}}}}
    out = apply_overrides(params, ["models.m.training.save_strategy=no"])
    assert out["models"]["m"]["training"]["save_strategy"] == "no"  # YAML 1.2: a string
    assert params["models"]["m"]["training"]["save_strategy"] == "steps"  # not mutated
    with pytest.raises(SystemExit, match="not a section"):
        apply_overrides(params, ["models.x.lora.r=8"])
