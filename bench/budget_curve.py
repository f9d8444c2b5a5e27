"""Budget curve: ONE fine-tuning run under a wall-clock training budget, scored at checkpoints.

The run's LLM (``runs.<method>.<run>``, e.g. ``noshow-smollm2-sft``) is fine-tuned once over up
to ``--max-rows`` training rows (the seeded, stratified subsample the train stage uses,
``clinlm.methods.interface.subsample``). The learning-rate schedule is planned for all of them; the
adapter is saved when the rows seen (optimizer steps x batch x accumulation x processes) pass
each ``--checkpoints`` value, and training stops when ``--budget-minutes`` of training time are
spent, saving a final checkpoint. So the curve is over rows seen WITHIN one run, not separate
runs (a separate 2,000-row run would have decayed its learning rate by then).

Each checkpoint is scored on the same seeded, stratified ``--eval-rows`` subsample of the TEST
split, the final one also on the whole test split (``--final-eval all``); the baseline (``gbdt``
trained on the whole training split) is scored on the same rows. ROC-AUC / PR-AUC get 95 %
bootstrap intervals and the paired difference to the baseline (``clinlm.bootstrap.compare_runs``).

Resumable: the results JSON is rewritten atomically after every checkpoint and every scored
chunk; a killed run restarts training from the last checkpoint through the Trainer's own
resume (optimizer, scheduler, RNG, data order; the budget counts the training seconds of
earlier sessions up to that checkpoint) and skips every point already scored. The settings are
recorded: resuming with different ones is an error. Single process (the budget is one clock).

Records: CPU model, cores, torch threads, precision (``clinlm.llm.precision.report``), rows and
tokens seen, training seconds and tokens/s per point, scoring rows/s.

The real 90-minute run (README "Real Kaggle data"), alone on the machine, in a checkout whose
pipeline has split the Kaggle file:

    dvc exp run -S tasks.noshow.download.source=csv \
        -S tasks.noshow.download.csv_path=../shared/data/noshow/KaggleV2-May-2016.csv.zip split@noshow
    python bench/budget_curve.py --run noshow-smollm2-sft --max-rows 16000 \
        --checkpoints 2000 4000 8000 16000 --budget-minutes 90 --eval-rows 2000 --final-eval all \
        -S models.smollm2-sft.training.per_device_train_batch_size=8

Rerun the same command after a kill to resume. ``--score-threads 2`` scores with more torch
threads than the run trained with (e.g. trained with 1 thread beside another job, scored alone);
it is not a recorded setting, so a resumed run may change it. ``--stack-holdout N`` also fits
the stack (``clinlm.methods.stack``: logistic regression on both models' logits) on N training
rows the LLM never saw, the baseline's scores on them out-of-fold, and scores it on the final
point's test rows against the baseline (paired bootstrap); rerun with it after a finished curve
to add only the stack. ``--max-rows``: about the rows 90 minutes can
see (rows/s x 5,400 s; ~2.3 s per step of 8 rows measured on a shared 2-core Zen 5), so the
schedule ends near the budget. On a machine shared with another job give the run one thread
(``-S models.smollm2-sft.torch_threads=1``): two 2-thread jobs on 2 cores ran 15x slower.
Outputs: ``bench/budget_curve_<task>.json`` and ``.md`` (``--out``); checkpoints and
predictions in ``data/budget_curve/<out name>`` (``--work``). Levers, each with its own
``--out``: model and prompt keys as ``-S`` here (``-S 'tasks.noshow.prompt.system=""'``,
``-S models.smollm2-sft.training.learning_rate=0.0005``, ``lora.r``, ``num_train_epochs``;
``training.torch_compile``: its ``auto`` compiles the decoder layers of a run this long
(1.2x the uncompiled tokens/s on the Zen 5 EPYC, after ~40 s of compiling that the budget
counts), ``-S models.smollm2-sft.training.torch_compile=false`` does not);
data levers rebuild the split first (``dvc exp run -S tasks.noshow.statements.style=compact
split@noshow``): ``-S`` here does not rerun the pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0] and its bench.py would shadow the `bench` folder
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from clinlm.io import write_csv, write_json  # noqa: E402
from clinlm.methods import CLASSIFICATION, Run, get_method  # noqa: E402
from clinlm.methods.interface import subsample  # noqa: E402

# trainer checkpoint files a scored point does not need (optimizer, scheduler, RNG, state)
RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
               "training_args.bin", "scaler.pt")
NOTE = ("One fine-tuning run: the learning-rate schedule is planned for all {steps} steps "
        "({rows} rows); the points are checkpoints of that run by rows seen, not separate runs.")


# ---- helpers shared with bench/learning_curve.py -----------------------------------------

def variant_run(run: Run, model_dir: Path, *, model: str | None = None,
                cfg: dict[str, Any] | None = None, **cfg_over: Any) -> Run:
    """A copy of ``run`` that saves to ``model_dir`` without training curves (scratch
    fine-tunes and baselines of benchmarks): ``model``/``cfg`` replace the model entry,
    ``cfg_over`` overrides keys of it. Defaults are filled in again (``Run.__post_init__``)."""
    new_cfg = copy.deepcopy(run.cfg if cfg is None else cfg)
    new_cfg.update(copy.deepcopy(cfg_over))
    return dataclasses.replace(run, model=model or run.model, cfg=new_cfg,
                               model_dir=Path(model_dir), log_dir=None,
                               work_dir=None)  # scratch (checkpoints) in model_dir, not the run's


def eval_subset(test: pd.DataFrame, n: int | None, run: Run) -> pd.DataFrame:
    """The fixed evaluation rows: a seeded, stratified subsample of the test split."""
    return subsample(test, n, run.seed, run.task_type)


# ---- machine facts -----------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``lscpu`` as a fallback), or ``unknown``."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError, ValueError):
        import subprocess
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def precision_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The training precision: ``clinlm.llm.precision.report`` (``auto`` resolved on this
    machine) where it exists, else the params' dtypes as written."""
    try:
        from clinlm.llm.precision import report
    except ImportError:
        return {"requested": "explicit", "resolved": cfg.get("dtype"), "reason": "params",
                "keys": {"dtype": cfg.get("dtype"),
                         "bnb_4bit_compute_dtype": (cfg.get("bnb") or {}).get("bnb_4bit_compute_dtype"),
                         "bf16": (cfg.get("training") or {}).get("bf16")}}
    return report(cfg)


# ---- training with a budget --------------------------------------------------------------

@contextlib.contextmanager
def resume_from(checkpoint: Path | None) -> Iterator[None]:
    """Make ``Trainer.train()`` resume from ``checkpoint`` (the Trainer's own resume: weights,
    optimizer, scheduler, RNG states, data skipping). ``clinlm.llm.fit.fit`` calls
    ``trainer.train()`` without arguments, so the argument is supplied here for the duration.

    The Trainer reloads a peft adapter with ``load_adapter``, which upcasts bf16 adapters to
    float32 (peft's ``autocast_adapter_dtype``): the trainable parameters get their dtype back
    (before the optimizer is built and its saved state cast to them), so a resumed QLoRA run
    trains in the same precision as an uninterrupted one."""
    if checkpoint is None:
        yield
        return
    from transformers import Trainer
    train0, load0 = Trainer.train, Trainer._load_from_checkpoint

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        return train0(self, resume_from_checkpoint or str(checkpoint), *args, **kwargs)

    def load(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        dtypes = {n: p.dtype for n, p in target.named_parameters() if p.requires_grad}
        load0(self, resume_from_checkpoint, model)
        for n, p in target.named_parameters():
            if n in dtypes and p.dtype != dtypes[n]:
                p.data = p.data.to(dtypes[n])

    Trainer.train, Trainer._load_from_checkpoint = train, load
    try:
        yield
    finally:
        Trainer.train, Trainer._load_from_checkpoint = train0, load0


def budget_callback(checkpoint_rows: list[int], budget_s: float, spent_s: float,
                    on_checkpoint: Callable[..., None], row_cap: int):
    """A ``TrainerCallback`` that saves a checkpoint when the rows seen pass each of
    ``checkpoint_rows`` and at the end, and stops training once ``spent_s`` (earlier sessions)
    plus this session's training time reach ``budget_s``. ``on_checkpoint(step=, rows_seen=,
    labels=, train_seconds=, tokens_seen=, checkpoint=, stopped_by=)`` runs after each save."""
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        def __init__(self) -> None:
            self.pending = sorted(set(checkpoint_rows))
            self.t0 = time.monotonic()
            self.labels: list[str] = []
            self.stopped_by: str | None = None
            self.torch_threads: int | None = None

        def rows(self, args, step: int) -> int:
            per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                        * args.world_size)
            return min(step * per_step, row_cap)  # the last batch may be short

        def elapsed(self) -> float:
            return spent_s + time.monotonic() - self.t0

        def on_train_begin(self, args, state, control, **kwargs):
            import torch
            self.t0, self.torch_threads = time.monotonic(), torch.get_num_threads()
            rows = self.rows(args, state.global_step)
            self.pending = [r for r in self.pending if r > rows]  # resumed: those are saved

        def on_step_end(self, args, state, control, **kwargs):
            rows = self.rows(args, state.global_step)
            due = [r for r in self.pending if rows >= r]
            self.pending = [r for r in self.pending if r not in due]
            final = state.global_step >= state.max_steps
            if not final and self.elapsed() >= budget_s:
                control.should_training_stop, final, self.stopped_by = True, True, "budget"
            elif final:
                self.stopped_by = "rows"
            self.labels = [str(r) for r in due] + (["final"] if final else [])
            if self.labels:
                control.should_save = True
            self.seconds = self.elapsed()
            return control

        def on_save(self, args, state, control, **kwargs):
            if not self.labels or not state.is_world_process_zero:
                return control
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            on_checkpoint(step=state.global_step, rows_seen=self.rows(args, state.global_step),
                          labels=self.labels, train_seconds=round(self.seconds, 1),
                          tokens_seen=int(state.num_input_tokens_seen), checkpoint=ckpt,
                          max_steps=state.max_steps, torch_threads=self.torch_threads,
                          stopped_by=self.stopped_by if "final" in self.labels else None)
            self.labels = []
            return control

    return BudgetCallback()


# ---- the results file --------------------------------------------------------------------

class Results:
    """The results JSON (and its markdown table), rewritten atomically on every change."""

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        self.path, self.md = Path(path), Path(path).with_suffix(".md")
        self.data: dict[str, Any] = {}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            old = self.data.get("spec", {})
            diff = {k: (old.get(k), v) for k, v in spec.items() if old.get(k) != v}
            if diff:
                raise SystemExit(f"{self.path} was made with other settings "
                                 f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}): "
                                 "resume with the same ones, or choose another --out and --work")
        self.data.setdefault("spec", spec)
        self.data.setdefault("training", {"done": False, "sessions": []})
        self.data.setdefault("points", [])
        self.data.setdefault("baseline", {})

    def save(self) -> None:
        write_json(self.path, self.data)
        from clinlm.io import atomic_path
        with atomic_path(self.md) as tmp:
            tmp.write_text(markdown(self.data))


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_to_budget(lrun: Run, train: pd.DataFrame, res: Results, budget_s: float,
                    checkpoints: list[int], extra_callbacks: list | None = None) -> None:
    """Fine-tune ``lrun`` (its ``max_train_rows`` rows) saving the checkpoints of
    :func:`budget_callback` as points under ``<work>/points``; resumes an interrupted run."""
    method = get_method(lrun.cfg["method"])
    import inspect
    if "extra_callbacks" not in inspect.signature(method.train).parameters:
        raise SystemExit(f"method {lrun.cfg['method']!r}: its train() takes no extra_callbacks "
                         "(clinlm/methods/sft.py has them); the budget needs a TrainerCallback")
    tr, points_dir = res.data["training"], lrun.model_dir.parent / "points"
    resume, spent = None, 0.0
    if res.data["points"]:
        last = res.data["points"][-1]
        resume, spent = ROOT / last["trainer_checkpoint"], last["train_seconds"]
        if not resume.is_dir():
            raise SystemExit(f"cannot resume: the trainer checkpoint {resume} of the last saved "
                             f"point is gone; delete {res.path} (and its --work) to start over")
    else:  # a fresh start: nothing half-done may remain
        shutil.rmtree(lrun.model_dir, ignore_errors=True)
        shutil.rmtree(points_dir, ignore_errors=True)
    n_rows = len(subsample(train, lrun.cfg["max_train_rows"], lrun.seed, lrun.task_type))
    epochs = float(lrun.cfg["training"].get("num_train_epochs", 1))
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from_step":
               res.data["points"][-1]["step"] if resume else 0}
    tr["sessions"].append(session)

    def on_checkpoint(*, step, rows_seen, labels, train_seconds, tokens_seen, checkpoint,
                      max_steps, torch_threads, stopped_by) -> None:
        name = f"step-{step:06d}"
        dst, tmp = points_dir / name, points_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(*RESUME_ONLY))
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        res.data["points"].append({
            "name": name, "labels": labels, "step": step, "rows_seen": rows_seen,
            "train_seconds": train_seconds, "tokens_seen": tokens_seen,
            "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
            "dir": _rel(dst), "trainer_checkpoint": _rel(checkpoint), "scores": {}})
        tr.update(max_steps=max_steps, planned_rows=int(min(max_steps * (rows_seen / step),
                                                            n_rows * epochs)),
                  rows_seen=rows_seen, steps=step, train_seconds=train_seconds,
                  tokens_seen=tokens_seen, torch_threads=torch_threads, n_rows=n_rows)
        tr["note"] = NOTE.format(steps=max_steps, rows=tr["planned_rows"])
        if stopped_by:
            tr.update(done=True, stopped_by=stopped_by)
        for old in checkpoint.parent.glob("checkpoint-*"):  # only the newest is resumed from
            if old != checkpoint:
                shutil.rmtree(old, ignore_errors=True)
        res.save()

    cb = budget_callback(checkpoints, budget_s, spent, on_checkpoint,
                         row_cap=int(n_rows * epochs))
    t0 = time.time()
    with resume_from(resume):
        info = method.train(lrun, train, extra_callbacks=[cb, *(extra_callbacks or [])])
    session["seconds"] = round(time.time() - t0, 1)  # with model loading and tokenizing
    tr.update(done=True, train_loss=info.get("train_loss"), last_loss=info.get("last_loss"),
              precision=info.get("precision", tr.get("precision")),
              trainable_parameters=info.get("trainable_parameters"))
    for p in res.data["points"]:  # files fit writes at the end (e.g. head.json) to every point
        for meta in lrun.model_dir.glob("*.json"):
            target = ROOT / p["dir"] / meta.name
            if not target.exists():
                shutil.copy2(meta, target)
    res.save()


# ---- scoring -----------------------------------------------------------------------------

def predict_chunks(run: Run, df: pd.DataFrame, path: Path, chunk_rows: int,
                   threshold: float, on_chunk: Callable[[], None] | None = None) -> pd.DataFrame:
    """``predict_table`` of ``df`` in chunks, appended to ``path`` (rewritten atomically after
    each): a killed scoring restarts after the last finished chunk."""
    from clinlm.predict import predict_table
    ids = df["id"].astype(str).tolist()
    done = pd.read_csv(path, dtype={"id": str}) if path.exists() else None
    if done is not None and done["id"].tolist() != ids[:len(done)]:
        raise SystemExit(f"{path}: its rows are not the start of the rows to score; delete it")
    parts = [] if done is None else [done]
    n = 0 if done is None else len(done)
    while n < len(df):
        parts.append(predict_table(run, df.iloc[n:n + chunk_rows], threshold))
        n += len(parts[-1])
        write_csv(path, pd.concat(parts, ignore_index=True))
        if on_chunk:
            on_chunk()
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def paired_scores(pred: pd.DataFrame, base: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """ROC-AUC / PR-AUC with 95 % intervals, the baseline's, and the paired difference."""
    from clinlm.bootstrap import compare_runs
    b = base.set_index("id").loc[pred["id"]].reset_index()
    cmp = compare_runs(CLASSIFICATION, {"llm": pred, "baseline": b}, "baseline", n_boot, seed)
    llm, bl = cmp["llm"], cmp["baseline"]
    return {"n_rows": llm["n_rows"], "n_boot": n_boot,
            **{m: llm["point"][m] for m in ("roc_auc", "pr_auc")},
            **{f"{m}_ci95": llm["ci95"][m] for m in ("roc_auc", "pr_auc")},
            "baseline": {**bl["point"], **{f"{m}_ci95": bl["ci95"][m] for m in bl["ci95"]}},
            "vs_baseline": llm["vs_baseline"]}


def score_points(lrun: Run, brun: Run, train: pd.DataFrame, test: pd.DataFrame, res: Results,
                 *, eval_rows: int | None, final_eval: str, n_boot: int, chunk_rows: int,
                 threshold: float, score_threads: int | None = None) -> None:
    """The baseline (trained once on all of ``train``) and every checkpoint, on the fixed
    evaluation rows; the final checkpoint also on all of ``test`` (``final_eval == "all"``).
    ``score_threads``: torch threads for scoring (default: the run's ``torch_threads``)."""
    from clinlm.predict import predict_table
    evald = eval_subset(test, eval_rows, lrun)
    work = lrun.model_dir.parent
    base_path = work / f"{brun.model}_test.csv"
    if not base_path.exists():
        t0 = time.time()
        info = get_method(brun.cfg["method"]).train(brun, train)
        write_csv(base_path, predict_table(brun, test, threshold))
        res.data["baseline"] = {"name": brun.model, "n_train": int(info.get("n_train", len(train))),
                                "seconds": round(time.time() - t0, 1)}
        res.save()
    base = pd.read_csv(base_path, dtype={"id": str})
    for p in res.data["points"]:
        sets = {"eval": evald}
        if "final" in p["labels"] and final_eval == "all":
            sets = {"all": test, "eval": evald}
        prun = point_run(lrun, p, score_threads)
        for which, df in sets.items():
            if which in p["scores"]:
                continue
            t0 = time.time()
            if which == "eval" and "all" in p["scores"]:  # a subset of the rows scored already
                full = pd.read_csv(ROOT / p["dir"] / "pred_all.csv", dtype={"id": str})
                pred = full.set_index("id").loc[evald["id"].astype(str)].reset_index()
            else:
                pred = predict_chunks(prun, df, ROOT / p["dir"] / f"pred_{which}.csv",
                                      chunk_rows, threshold)
            seconds = time.time() - t0
            p["scores"][which] = {**paired_scores(pred, base, n_boot, lrun.seed),
                                  "score_seconds": round(seconds, 1),
                                  "score_threads": prun.cfg.get("torch_threads"),
                                  "rows_per_second": round(len(df) / max(seconds, 1e-9), 2)}
            res.save()


def point_run(lrun: Run, point: dict[str, Any], score_threads: int | None = None) -> Run:
    """The run that scores a saved point (its adapter), with ``score_threads`` torch threads."""
    over = {"torch_threads": score_threads} if score_threads else {}
    return variant_run(lrun, ROOT / point["dir"], **over)


# ---- the stack on the final checkpoint ---------------------------------------------------

def stack_final(lrun: Run, brun: Run, train: pd.DataFrame, test: pd.DataFrame, res: Results,
                *, n_holdout: int, folds: int, n_boot: int, chunk_rows: int, threshold: float,
                score_threads: int | None = None) -> None:
    """``method: stack`` (``clinlm.methods.stack``) on the final checkpoint: the combiner is
    fitted on ``n_holdout`` TRAINING rows outside the LLM's subsample (its LLM scores from the
    final adapter, the baseline's out-of-fold), then applied to the test predictions of the
    final point and the baseline; scored against the baseline with the paired bootstrap.
    Resumable: the holdout scores are saved (``<work>/stack``) before the combiner is fitted."""
    from clinlm.methods.stack import baseline_oof, combine_scores, fit_combiner, select_holdout
    if res.data.get("stack", {}).get("test"):
        return
    final = next(p for p in res.data["points"] if "final" in p["labels"])
    which = "all" if "all" in final["scores"] else "eval"
    work = lrun.model_dir.parent / "stack"
    work.mkdir(parents=True, exist_ok=True)
    holdout, llm_ids = select_holdout(train, lrun, n_holdout, lrun.seed,
                                      set(test["id"].astype(str)))
    y = holdout["label"].eq("Yes").to_numpy(float)
    t0 = time.time()
    llm = predict_chunks(point_run(lrun, final, score_threads), holdout,
                         work / "llm_holdout.csv", chunk_rows, threshold)["p_yes"].to_numpy(float)
    llm_seconds = time.time() - t0
    oof_path = work / "baseline_oof.csv"
    if not oof_path.exists():
        oof = baseline_oof(brun, train, holdout, folds, lrun.seed)
        write_csv(oof_path, pd.DataFrame({"id": holdout["id"].astype(str), "p_yes": oof}))
    base_h = pd.read_csv(oof_path, dtype={"id": str})["p_yes"].to_numpy(float)
    comb, report = fit_combiner(CLASSIFICATION, llm, base_h, y, folds, lrun.seed, n_boot)
    # the test rows: the final point's and the baseline's saved predictions, matched by id
    pred = pd.read_csv(ROOT / final["dir"] / f"pred_{which}.csv", dtype={"id": str})
    base = pd.read_csv(lrun.model_dir.parent / f"{brun.model}_test.csv", dtype={"id": str})
    b = base.set_index("id").loc[pred["id"], "p_yes"].to_numpy(float)
    s = combine_scores(comb, pred["p_yes"].to_numpy(float), b)
    stack_pred = pred[["id", "y_true"]].assign(p_yes=s)
    write_csv(work / f"stack_{which}.csv", stack_pred)
    res.data["stack"] = {
        **report, "n_llm_train_rows": len(llm_ids), "llm_holdout_seconds": round(llm_seconds, 1),
        "test": {which: paired_scores(stack_pred, base, n_boot, lrun.seed)}}
    res.save()


# ---- report ------------------------------------------------------------------------------

def _ci(x: float, ci: list[float]) -> str:
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(data: dict[str, Any]) -> str:
    """The results as a markdown table with a header on the run, machine and budget."""
    spec, tr, m = data["spec"], data["training"], data.get("machine", {})
    prec = (tr.get("precision") or m.get("precision") or {})
    lines = [f"### Budget curve: {spec.get('run')} on {spec.get('task')} (one fine-tuning run)", "",
             f"CPU: {m.get('cpu')}, {m.get('cores')} cores, torch threads "
             f"{tr.get('torch_threads')}; precision {prec.get('resolved')} ({prec.get('reason')}). "
             f"Budget {spec.get('budget_minutes')} min of training over up to "
             f"{spec.get('max_rows')} rows.", ""]
    if tr.get("note"):
        lines += [tr["note"] + (f" Stopped by {tr['stopped_by']} at {tr['rows_seen']:,} rows seen, "
                                f"{tr['train_seconds'] / 60:.1f} min of training."
                                if tr.get("stopped_by") else ""), ""]
    lines += ["| checkpoint | rows seen | train min | tokens/s | test rows | ROC-AUC [95 % CI] | "
              "PR-AUC [95 % CI] | baseline ROC-AUC | ROC-AUC - baseline [95 % CI] |",
              "|---|---:|---:|---:|---:|---|---|---|---|"]
    for p in data["points"]:
        for which in ("eval", "all"):
            s = p["scores"].get(which)
            if not s:
                continue
            d = s["vs_baseline"]["roc_auc"]
            lines.append(
                f"| {', '.join(p['labels'])} | {p['rows_seen']:,} | {p['train_seconds'] / 60:.1f} | "
                f"{p['tokens_per_second']:.0f} | {s['n_rows']:,} | {_ci(s['roc_auc'], s['roc_auc_ci95'])} | "
                f"{_ci(s['pr_auc'], s['pr_auc_ci95'])} | "
                f"{_ci(s['baseline']['roc_auc'], s['baseline']['roc_auc_ci95'])} | "
                f"{_ci(d['diff'], d['ci95'])} ({d['verdict']}) |")
    st = data.get("stack") or {}
    for s in (st.get("test") or {}).values():
        d = s["vs_baseline"]["roc_auc"]
        lines.append(
            f"| stack (final + {data['spec'].get('baseline')}) | | | | {s['n_rows']:,} | "
            f"{_ci(s['roc_auc'], s['roc_auc_ci95'])} | {_ci(s['pr_auc'], s['pr_auc_ci95'])} | "
            f"{_ci(s['baseline']['roc_auc'], s['baseline']['roc_auc_ci95'])} | "
            f"{_ci(d['diff'], d['ci95'])} ({d['verdict']}) |")
    if st:
        c = st["llm_coef"]
        lines += ["", f"Stack: logistic regression on both models' logits, fitted on "
                  f"{st['n_holdout']:,} training rows the LLM never saw (baseline out-of-fold, "
                  f"{st['folds']} folds); LLM coefficient {_ci(c['value'], c['ci95'])} per SD: "
                  f"{c['verdict']}."]
    b = data.get("baseline") or {}
    if b:
        lines += ["", f"Baseline: {b['name']} trained on {b['n_train']:,} rows (the whole training "
                  "split), scored on the same rows; intervals: paired bootstrap "
                  f"({spec.get('n_boot')} resamples)."]
    return "\n".join(lines) + "\n"


# ---- the whole run -----------------------------------------------------------------------

def run_curve(lrun: Run, brun: Run, train: pd.DataFrame, test: pd.DataFrame, *, out: Path,
              max_rows: int | None, checkpoints: list[int], budget_minutes: float,
              eval_rows: int | None, final_eval: str = "all", n_boot: int = 1000,
              chunk_rows: int = 1000, threshold: float = 0.5, name: str | None = None,
              extra_callbacks: list | None = None, score_threads: int | None = None,
              stack_holdout: int | None = None, stack_folds: int = 5) -> dict[str, Any]:
    """Train ``lrun`` to the budget (or resume), score every checkpoint and the baseline
    ``brun``; results in ``out`` (JSON) and ``out.with_suffix('.md')``. ``lrun.model_dir``'s
    parent is the work folder (trainer checkpoints, points, predictions)."""
    if lrun.task_type != CLASSIFICATION:
        raise SystemExit(f"{lrun.model}: the budget curve reports ROC-AUC; it needs a "
                         "classification task")
    if final_eval not in ("all", "eval"):
        raise SystemExit(f"--final-eval {final_eval!r}: expected all or eval")
    training = {**lrun.cfg["training"], "save_strategy": "no",  # only the callback saves
                "include_num_input_tokens_seen": "non_padding"}
    lrun = variant_run(lrun, lrun.model_dir, max_train_rows=max_rows, training=training)
    spec = {"run": name or lrun.model, "task": lrun.task, "method": lrun.cfg["method"],
            "max_rows": max_rows if max_rows is not None else len(train),
            "checkpoints": sorted(checkpoints), "budget_minutes": budget_minutes,
            "eval_rows": eval_rows, "final_eval": final_eval, "n_boot": n_boot,
            "seed": lrun.seed, "baseline": brun.model, "n_train": len(train),
            "n_test": len(test), "model_cfg": _fingerprint(lrun.cfg),
            "task_cfg": _fingerprint(lrun.task_cfg), "baseline_cfg": _fingerprint(brun.cfg)}
    res = Results(out, spec)
    res.data["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count(),
                           "cores_usable": len(os.sched_getaffinity(0)),
                           "precision": precision_of(lrun.cfg)}
    if not res.data["training"]["done"]:
        train_to_budget(lrun, train, res, budget_minutes * 60, checkpoints, extra_callbacks)
    score_points(lrun, brun, train, test, res, eval_rows=eval_rows, final_eval=final_eval,
                 n_boot=n_boot, chunk_rows=chunk_rows, threshold=threshold,
                 score_threads=score_threads)
    if stack_holdout:
        stack_final(lrun, brun, train, test, res, n_holdout=stack_holdout, folds=stack_folds,
                    n_boot=n_boot, chunk_rows=chunk_rows, threshold=threshold,
                    score_threads=score_threads)
    res.save()
    return res.data


def main(argv: list[str] | None = None) -> None:
    """CLI (see the module docstring)."""
    from clinlm.params import load_params
    from clinlm.paths import setup_logging
    from clinlm.runs import make_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="runs.<method>.<name> of the LLM (classification)")
    ap.add_argument("--baseline", default="gbdt", help="models.<name> of the baseline")
    ap.add_argument("--max-rows", type=int, default=None,
                    help="training rows the schedule is planned for (default: the largest checkpoint)")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[2000, 4000, 8000, 16000],
                    help="rows seen at which the adapter is saved and scored")
    ap.add_argument("--budget-minutes", type=float, default=90.0, help="wall-clock training budget")
    ap.add_argument("--eval-rows", type=int, default=2000, help="test rows scored per checkpoint")
    ap.add_argument("--final-eval", choices=["all", "eval"], default="all",
                    help="the final checkpoint on the whole test split (all) or the eval rows")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--chunk-rows", type=int, default=1000, help="rows scored between saves")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="params override (YAML value), e.g. "
                    "models.smollm2-sft.training.learning_rate=0.0005")
    ap.add_argument("--score-threads", type=int, default=None,
                    help="torch threads for scoring (not a recorded setting: a resumed run may "
                    "score with more threads than it trained with)")
    ap.add_argument("--stack-holdout", type=int, default=None, metavar="N",
                    help="also fit the stack (clinlm.methods.stack) on N training rows the LLM "
                    "never saw and score it on the final point's test rows")
    ap.add_argument("--stack-folds", type=int, default=5, help="the stack's out-of-fold parts")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--work", type=Path, default=None, help="default data/budget_curve/<out stem>")
    ap.add_argument("--out", type=Path, default=None, help="default bench/budget_curve_<task>.json")
    args = ap.parse_args(argv)
    setup_logging()

    params = apply_overrides(load_params(args.params), args.overrides)
    run = make_run(args.run, params)
    out = args.out or ROOT / f"bench/budget_curve_{run.task}.json"
    work = args.work or ROOT / "data" / "budget_curve" / out.stem  # one work folder per result
    train = pd.read_parquet(run.data_dir / "train.parquet")
    test = pd.read_parquet(run.data_dir / "test.parquet")
    lrun = variant_run(run, work / "model")
    brun = variant_run(run, work / args.baseline, model=args.baseline,
                       cfg=params["models"][args.baseline])
    data = run_curve(lrun, brun, train, test, out=out, name=args.run,
                     max_rows=args.max_rows or max(args.checkpoints), checkpoints=args.checkpoints,
                     budget_minutes=args.budget_minutes, eval_rows=args.eval_rows,
                     final_eval=args.final_eval, n_boot=args.n_boot, chunk_rows=args.chunk_rows,
                     threshold=params["predict"]["threshold"], score_threads=args.score_threads,
                     stack_holdout=args.stack_holdout, stack_folds=args.stack_folds)
    print(markdown(data))


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` overrides (the value read as YAML 1.2, as DVC reads params.yaml);
    ``make_run`` validates the result."""
    from ruamel.yaml import YAML
    yaml = YAML(typ="safe", pure=True)
    params = copy.deepcopy(params)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-S {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = params
        for k in parents:
            if not isinstance(node.get(k), dict):
                raise SystemExit(f"-S {item!r}: {k!r} is not a section of the params")
            node = node[k]
        node[leaf] = yaml.load(value)
    return params


if __name__ == "__main__":
    main()
