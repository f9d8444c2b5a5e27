"""Multiclass targets (issue 28): the table task's labels, every method's class probabilities,
the multiclass metrics and intervals, the stack's log-linear pool, and the answers of ask."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from clinlm.io import DataError
from clinlm.methods.interface import Run
from clinlm.params import ParamsError, validate
from clinlm.tasks import get_task
from tests.conftest import RHYTHM_TEXTS, rhythm_frame, rhythm_task, tiny_sft_cfg

LABELS = ["AF", "AFL", "SR"]


def _download(tmp_path, cfg, frame=None, name="rhythm"):
    path = tmp_path / "rhythm.csv"
    if frame is not None or not path.exists():
        (rhythm_frame() if frame is None else frame).to_csv(path, index=False)
    cfg["download"]["csv_path"] = str(path)
    task = get_task(name, cfg)
    raw = tmp_path / "raw"
    info = task.download(cfg, 0, raw)
    return task, raw, info


def _table(tmp_path, monkeypatch, n=150, seed=0, **answer):
    """The rhythm task downloaded and turned into statements in a scratch project."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "rhythm.csv"
    rhythm_frame(n, seed).to_csv(path, index=False)
    cfg = rhythm_task(path, **answer)
    task = get_task("rhythm", cfg)
    raw = tmp_path / "data" / "raw" / "rhythm"
    task.download(cfg, 0, raw)
    return cfg, task.build_table(cfg, raw)


# ---- the target -------------------------------------------------------------------------

def test_labels_from_the_data_in_natural_order(tmp_path):
    cfg = rhythm_task(tmp_path / "x.csv", labels=None)
    _, raw, info = _download(tmp_path, cfg)
    t = info["target"]
    assert t["type"] == "multiclass" and t["labels"] == LABELS and t["texts"] == {
        k: k for k in LABELS}
    assert sum(t["counts"].values()) == 150
    spec = json.loads((raw / "columns.json").read_text())
    assert spec["target"]["labels"] == LABELS
    table = pd.read_parquet(raw / "table.parquet")
    assert set(table["target"]) == set(LABELS)


def test_declared_labels_keep_their_order_and_texts(tmp_path):
    cfg = rhythm_task(tmp_path / "x.csv", labels={"SR": "sinus rhythm", "AF": "atrial "
                                                  "fibrillation", "AFL": "atrial flutter"})
    _, _, info = _download(tmp_path, cfg)
    assert info["target"]["labels"] == ["SR", "AF", "AFL"]
    assert info["target"]["texts"]["AFL"] == "atrial flutter"


def test_numeric_codes_sort_as_numbers_and_read_canonically(tmp_path):
    frame = rhythm_frame()
    frame["rhythm"] = frame["rhythm"].map({"SR": "10.0", "AF": "2", "AFL": "1"})
    cfg = rhythm_task(tmp_path / "x.csv", labels=None)
    _, _, info = _download(tmp_path, cfg, frame)
    assert info["target"]["labels"] == ["1", "2", "10"]


@pytest.mark.parametrize("change,match", [
    ({"labels": {"SR": "sinus", "AF": "af"} | {"X": "x"}},
     r"label\(s\) \['AFL'\] are not in tasks\.rhythm\.answer\.labels"),
    ({"labels": ["SR", "AF", "AFL", "VT"]}, r"answer\.labels: \['VT'\] have no row"),
])
def test_declared_labels_must_match_the_data(tmp_path, change, match):
    cfg = rhythm_task(tmp_path / "x.csv", **change)
    with pytest.raises((DataError, ValueError), match=match):
        _download(tmp_path, cfg)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.assign(rhythm=np.where(np.arange(len(f)) == 0, "VT", f["rhythm"])),
     r"label\(s\) with a single row: \{'VT': 1\}"),
    (lambda f: f.assign(rhythm=np.where(np.arange(len(f)) < 3, "af", f["rhythm"])),
     r"labels \['AF', 'af'\] differ in case only"),
    (lambda f: f.assign(rhythm=np.where(f["rhythm"] == "AFL", "AF", f["rhythm"])),
     r"the target has 2 label\(s\) .*three or more"),
    (lambda f: f.assign(rhythm=[f"L{i % 30}" for i in range(len(f))]),
     r"the target has 30 labels .*at most 20 \(tasks\.rhythm\.download\.max_categories\)"),
])
def test_bad_multiclass_targets(tmp_path, edit, match):
    cfg = rhythm_task(tmp_path / "x.csv", labels=None)
    with pytest.raises(DataError, match=match):
        _download(tmp_path, cfg, edit(rhythm_frame()))


def test_params_errors_name_the_key(tmp_path):
    def params(task):
        return {"seed": 0, "tasks": {"rhythm": task}, "models": {}, "runs": {}}
    base = rhythm_task(tmp_path / "x.csv")
    binary = {**base, "type": "classification"}
    with pytest.raises(ParamsError, match=r"tasks\.rhythm\.answer\.labels: only a multiclass task"):
        validate(params(binary), library_models=[])
    two = {**base, "answer": {"labels": ["SR", "AF"]}}
    with pytest.raises(ParamsError, match=r"three or more labels"):
        validate(params(two), library_models=[])
    dup = {**base, "answer": {"labels": {"SR": "rhythm", "AF": "Rhythm", "AFL": "x"}}}
    with pytest.raises(ParamsError, match=r"answer text must be non-empty and distinct"):
        validate(params(dup), library_models=[])
    pos = {**base, "download": {**base["download"], "positive_label": "AF"}}
    with pytest.raises(ParamsError, match=r"positive_label: only a two-label classification"):
        validate(params(pos), library_models=[])
    noshow = {"type": "multiclass", "download": {}, "statements": {}}
    with pytest.raises(ParamsError, match=r"tasks\.noshow\.type: 'multiclass', but this task's "
                                          r"data is classification"):
        validate({"seed": 0, "tasks": {"noshow": noshow}, "models": {}, "runs": {}},
                 library_models=[])


def test_split_refuses_a_label_only_in_the_test_split():
    """One patient holds every VT row; when the grouped split sends that patient to the test
    side, a model could never learn VT: an error naming the label, not a silent split."""
    from clinlm.split import split_table
    df = pd.DataFrame({"id": [str(i) for i in range(40)],
                       "label": ["VT"] * 3 + ["SR", "AF"] * 18 + ["SR"]})
    df["group"] = np.where(df["label"] == "VT", "vt-patient", df["id"])
    train, test = split_table(df, 0.5, 0, True, "classification")  # a binary split does not care
    assert "VT" in set(test["label"]) and "VT" not in set(train["label"])
    with pytest.raises(ValueError, match=r"label\(s\) \['VT'\] fell in the test split only"):
        split_table(df, 0.5, 0, True, "multiclass")


# ---- metrics and intervals ---------------------------------------------------------------

def _pred(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(LABELS, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * (np.array(LABELS)[None, :] == y[:, None])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "y_true": y,
                          "y_pred": np.array(LABELS)[p.argmax(axis=1)]})
    for k, c in enumerate(LABELS):
        frame[f"p_{c}"] = p[:, k]
    return frame, y, p


def test_multiclass_metrics_equal_sklearn():
    from clinlm.metrics import multiclass_metrics
    frame, y, p = _pred()
    frame.loc[0, ["p_AF", "p_AFL", "p_SR"]] = np.nan  # an unanswered row: counted, left out
    m, plots = multiclass_metrics(frame)
    ok = np.arange(len(y)) > 0
    yhat = np.array(LABELS)[p[ok].argmax(axis=1)]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y[ok], yhat))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y[ok], yhat, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y[ok], yhat))
    assert m["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(
        y[ok], p[ok], multi_class="ovr", average="macro", labels=LABELS))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y[ok], p[ok], labels=LABELS))
    assert m["n_failed"] == 1 and m["n_test"] == len(y)
    cm = skm.confusion_matrix(y[ok], yhat, labels=LABELS)
    assert m["confusion_matrix"]["AF"]["SR"] == cm[0, 2]
    assert sum(sum(r.values()) for r in m["confusion_matrix"].values()) == ok.sum()
    assert m["per_class"]["SR"]["recall"] == pytest.approx(
        skm.recall_score(y[ok], yhat, labels=["SR"], average="macro"))
    assert list(plots["confusion"].columns) == ["actual", "predicted"]


def test_multiclass_bootstrap_statistics_equal_sklearn_with_weights():
    from clinlm.bootstrap import task_statistics
    _, y, p = _pred(120, seed=3)
    idx = pd.Index(LABELS).get_indexer(y)
    w = np.random.default_rng(0).multinomial(len(y), np.full(len(y), 1 / len(y)), size=3)
    stats = task_statistics("multiclass", idx, p)
    for i in range(3):
        assert stats["accuracy"](w)[i] == pytest.approx(skm.accuracy_score(
            idx, p.argmax(axis=1), sample_weight=w[i]))
        assert stats["log_loss"](w)[i] == pytest.approx(skm.log_loss(
            idx, p, sample_weight=w[i], labels=[0, 1, 2]))
        aucs = [skm.roc_auc_score(idx == k, p[:, k], sample_weight=w[i]) for k in range(3)]
        assert stats["macro_roc_auc"](w)[i] == pytest.approx(np.mean(aucs))


def test_compare_runs_pairs_multiclass_runs_and_refuses_other_classes():
    from clinlm.bootstrap import compare_runs
    a, _, _ = _pred(150, seed=1)
    b, _, _ = _pred(150, seed=1)
    b[["p_AF", "p_AFL", "p_SR"]] = 1 / 3  # a constant model: chance accuracy, AUC 0.5
    out = compare_runs("multiclass", {"gbdt": a, "flat": b}, "gbdt", n_boot=200)
    assert out["flat"]["point"]["macro_roc_auc"] == pytest.approx(0.5)
    v = out["flat"]["vs_baseline"]
    assert v["macro_roc_auc"]["verdict"] == "worse" and v["log_loss"]["verdict"] == "worse"
    with pytest.raises(ValueError, match=r"other: classes \['AF', 'SR'\] differ"):
        compare_runs("multiclass", {"gbdt": a, "other": a.drop(columns=["p_AFL"])}, "gbdt")


# ---- the methods ---------------------------------------------------------------------------

def _run(tmp_path, name, cfg, task_cfg, table):
    d = tmp_path / "processed"
    d.mkdir(exist_ok=True)
    return Run(task="rhythm", task_type="multiclass", model=name, cfg=cfg,
               model_dir=tmp_path / "models" / name, data_dir=d, seed=0, task_cfg=task_cfg)


def _check_probs(pred, n):
    cols = [f"p_{c}" for c in ["SR", "AF", "AFL"]]  # the declared order
    assert list(pred.columns) == ["id", *cols] and len(pred) == n
    np.testing.assert_allclose(pred[cols].sum(axis=1), 1.0, atol=1e-6)


def test_gbdt_multiclass_learns_the_rhythm(tmp_path, monkeypatch):
    from clinlm.methods import get_method
    from clinlm.predict import predict_table
    task_cfg, table = _table(tmp_path, monkeypatch, n=300)
    run = _run(tmp_path, "gbdt", {"method": "gbdt", "hist_gbdt": {"max_iter": 50}},
               task_cfg, table)
    get_method("gbdt").train(run, table.iloc[:200])
    assert json.loads((run.model_dir / "classes.json").read_text())["labels"] == ["SR", "AF",
                                                                                  "AFL"]
    pred = get_method("gbdt").predict(run, table.iloc[200:])
    _check_probs(pred, 100)
    shaped = predict_table(run, table.iloc[200:])
    assert (shaped["y_pred"] == table["label"].iloc[200:].to_numpy()).mean() > 0.8


@pytest.mark.parametrize("method", ["sft", "head"])
def test_llm_methods_answer_every_label(method, tiny_llama, tmp_path, monkeypatch):
    """sft and head on the tiny Llama: one probability per declared class, each row summing to
    1, a row's answer independent of its batch-mates, and the sft run's training answers the
    declared texts (a label's whole answer, not its first token)."""
    from clinlm.methods import get_method
    task_cfg, table = _table(tmp_path, monkeypatch, n=40)
    cfg = tiny_sft_cfg(tiny_llama, epochs=1)
    if method == "head":
        cfg = {k: v for k, v in cfg.items() if k != "sft"}
        cfg.update(method="head", class_weights="balanced")
        cfg["lora"]["task_type"] = "SEQ_CLS"
    run = _run(tmp_path, method, cfg, task_cfg, table)
    m = get_method(method)
    m.train(run, table.iloc[:30])
    assert json.loads((run.model_dir / "classes.json").read_text())["texts"] == [
        "sinus rhythm", "atrial fibrillation", "atrial flutter"]
    rows = table.iloc[30:]
    pred = m.predict(run, rows)
    _check_probs(pred, len(rows))
    alone = m.predict(run, rows.iloc[[3]])
    np.testing.assert_allclose(alone.iloc[0, 1:].to_numpy(float),
                               pred.iloc[3, 1:].to_numpy(float), atol=1e-5)
    if method == "head":
        meta = json.loads((run.model_dir / "head.json").read_text())
        assert meta["num_labels"] == 3 and meta["labels"] == {"SR": 0, "AF": 1, "AFL": 2}


def test_sft_training_answers_are_the_declared_texts(tiny_llama, tmp_path, monkeypatch):
    from clinlm.llm.tokenizer import load_tokenizer
    from clinlm.methods.sft import tokenize_for_sft
    task_cfg, table = _table(tmp_path, monkeypatch, n=12)
    tok = load_tokenizer(tiny_llama)
    enc = tokenize_for_sft(tok, table, {**task_cfg, "answer": task_cfg["answer"]}, "multiclass",
                           RHYTHM_TEXTS)
    for ids, mask, label in zip(enc["input_ids"], enc["completion_mask"], table["label"],
                                strict=True):
        answer = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert answer.startswith(RHYTHM_TEXTS[label]), (label, answer)


def test_label_probabilities_are_exact_against_full_forwards(tiny_llama):
    """P(label) = product over the label's answer tokens (and the end of turn) of full-model
    next-token probabilities, renormalised over the answer alphabet; then over the labels.
    Two labels sharing their first token get different probabilities."""
    import torch
    from transformers import AutoModelForCausalLM

    from clinlm.llm.choices import sequence_probs
    from clinlm.llm.scorer import Scorer
    from clinlm.llm.tokenizer import load_tokenizer
    from clinlm.methods.sft import label_sequences, prompt_texts

    tok = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    task_cfg = {"prompt": {"system": "Name the rhythm.", "question": "Which rhythm?"}}
    texts = list(RHYTHM_TEXTS.values())
    seqs = label_sequences(tok, task_cfg, texts)
    assert seqs[1][0] == seqs[2][0] and seqs[1] != seqs[2]  # "atrial ..." twice
    prompts = prompt_texts(tok, ["Heart rate 88.", "Heart rate 150, flutter waves seen in "
                                 "the inferior leads."], task_cfg)
    probs = sequence_probs(Scorer(model, tok, batch_size=2), prompts, seqs)
    alphabet = sorted({t for s in seqs for t in s})
    for row, prompt in enumerate(prompts):
        base = tok(prompt, add_special_tokens=False)["input_ids"]
        ref = []
        for s in seqs:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([base + s[:-1]])).logits[0].double()
            q = torch.softmax(logits[len(base) - 1:, alphabet], -1).numpy()
            ref.append(np.prod([q[k, alphabet.index(t)] for k, t in enumerate(s)]))
        ref = np.array(ref) / np.sum(ref)
        np.testing.assert_allclose(probs[row], ref, rtol=1e-4)
    assert abs(probs[0, 1] - probs[0, 2]) > 1e-6


def test_cohere_reads_a_label_from_the_reply():
    from clinlm.methods.cohere import parse_answer, select_few_shot
    t = RHYTHM_TEXTS
    assert parse_answer("Atrial flutter.", "multiclass", t) == "AFL"
    assert parse_answer("atrial fibrillation, most likely", "multiclass", t) == "AF"
    assert parse_answer("This looks like sinus rhythm to me", "multiclass", t) == "SR"
    assert parse_answer("either atrial flutter or sinus rhythm", "multiclass", t) is None
    assert parse_answer("atrial", "multiclass", t) is None
    df = rhythm_frame(30).rename(columns={"rhythm": "label"}).assign(statement="s")
    shots = select_few_shot(df, 6, "multiclass", 0, t)
    assert sorted(s["answer"] for s in shots) == sorted(list(t.values()) * 2)


# ---- the stack's pool ----------------------------------------------------------------------

def _pool_case(n=400, seed=0, k=3):
    """An informative LLM member and a noisy baseline over k classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    strong = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[y]
    weak = rng.normal(size=(n, k)) + 0.3 * np.eye(k)[y]

    def soft(z):
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return y, soft(strong), soft(weak)


def test_pool_finds_the_informative_member():
    from clinlm.methods.combiner import fit_combiner
    y, llm, base = _pool_case()
    comb, report = fit_combiner("multiclass", llm, base, y, folds=5, seed=0, n_boot=200)
    assert report["llm_coef"]["ci95"][0] > 0 and report["llm_coef"]["verdict"] == (
        "adds information")
    assert comb.coef[0] > 3 * abs(comb.coef[1])
    h = report["holdout_metrics"]
    assert h["stack (cross-validated)"]["accuracy"] >= h["baseline"]["accuracy"]
    p = comb.score(__import__("clinlm.methods.combiner", fromlist=["x"]).member_features(
        "multiclass", llm, base))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_pool_with_two_classes_is_the_logistic_combiner():
    """Two classes: the pool is the logistic combiner. The centred log-probabilities are
    ± half the member's logit, so the class-1 minus class-0 score is ``c + a_llm logit_llm +
    a_base logit_base``: the same coefficients."""
    from clinlm.methods.combiner import fit_weighted, member_features
    y, llm, base = _pool_case(300, seed=2, k=2)
    xm = member_features("multiclass", llm, base)
    xb = member_features("classification", llm[:, 1], base[:, 1])
    w = np.ones((1, len(y)))
    pool = fit_weighted("multiclass", xm, y, w)[0]
    logistic = fit_weighted("classification", xb, y.astype(float), w)[0]
    np.testing.assert_allclose(pool[1:], logistic[1:], rtol=1e-4)
    np.testing.assert_allclose(pool[0], logistic[0], rtol=1e-4)


def test_pool_batched_equals_one_by_one():
    from clinlm.methods.combiner import fit_weighted, member_features
    y, llm, base = _pool_case(120, seed=4)
    x = member_features("multiclass", llm, base)
    w = np.random.default_rng(0).multinomial(len(y), np.full(len(y), 1 / len(y)), size=4)
    batched = fit_weighted("multiclass", x, y, w.astype(float))
    for i in range(4):
        np.testing.assert_allclose(batched[i], fit_weighted("multiclass", x, y, w[i:i + 1]
                                                            .astype(float))[0], rtol=1e-8)


# ---- the answers a person reads -------------------------------------------------------------

def test_ask_answers_and_predict_schema(tmp_path, monkeypatch):
    from clinlm.ask import answers
    from clinlm.predict import answer_table, shape_predictions
    from clinlm.tasks import Screened

    task_cfg, table = _table(tmp_path, monkeypatch, n=30)
    run = _run(tmp_path, "gbdt", {"method": "gbdt"}, task_cfg, table)
    rows = table.iloc[:2]
    out = pd.DataFrame({"id": rows["id"], "p_SR": [0.2, np.nan], "p_AF": [0.7, np.nan],
                        "p_AFL": [0.1, np.nan]})
    res = shape_predictions(run, rows, out)
    assert res["y_pred"].tolist() == ["AF", None]
    screened = Screened(n=3, rows=[1, 3], ids=["a", "b", "c"], table=rows,
                        refused={2: ("heart_rate", "not a number")})
    table_out = answer_table(run, screened, res)
    assert table_out["status"].tolist() == ["ok", "refused", "ok"]
    got = answers("multiclass", table_out, ["s1", None, "s3"], 0.5)
    assert got[0]["prediction"] == "AF" and got[0]["probabilities"] == {
        "SR": 0.2, "AF": 0.7, "AFL": 0.1}
    assert got[1]["field"] == "heart_rate" and got[2]["prediction"] is None
