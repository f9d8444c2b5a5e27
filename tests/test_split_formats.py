"""Split (stratified, grouped, seeded) and the JSONL training formats."""

import json

import pandas as pd

from clinlm.formats import write_formats
from clinlm.noshow.statements import build_statements
from clinlm.noshow.synthetic import generate_synthetic
from clinlm.split import split_table

TASK = {"prompt": {"system": "Answer Yes or No.", "question": "Will they miss it?"}}


def _table(n=2000):
    return build_statements(generate_synthetic(n, seed=3))


def test_grouped_split_keeps_patients_apart_and_stratifies():
    t = _table()
    train, test = split_table(t, 0.2, 42, True, "classification")
    assert not set(train["group"]) & set(test["group"])
    assert len(train) + len(test) == len(t)
    assert abs(len(test) / len(t) - 0.2) < 0.05
    assert abs(train["label"].eq("Yes").mean() - test["label"].eq("Yes").mean()) < 0.03


def test_split_is_seeded():
    t = _table(500)
    a = split_table(t, 0.2, 7, False, "classification")[1]["id"].tolist()
    b = split_table(t, 0.2, 7, False, "classification")[1]["id"].tolist()
    c = split_table(t, 0.2, 8, False, "classification")[1]["id"].tolist()
    assert a == b and a != c


def test_regression_split():
    t = pd.DataFrame({"id": [str(i) for i in range(100)], "group": [str(i) for i in range(100)],
                      "label": range(100)})
    train, test = split_table(t, 0.25, 1, True, "regression")
    assert len(test) == 25 and test["label"].std() > 10


def test_formats(tmp_path):
    t = _table(300)
    train, test = split_table(t, 0.2, 42, True, "classification")
    counts = write_formats(train, test, TASK, "classification", tmp_path, eval_fraction=0.1, seed=1)
    # only the Cohere files: nothing reads a generic chat JSONL (sft/head tokenize the parquet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohere_eval.jsonl", "cohere_train.jsonl"]
    co_train = (tmp_path / "cohere_train.jsonl").read_text().splitlines()
    co_eval = (tmp_path / "cohere_eval.jsonl").read_text().splitlines()
    assert len(co_train) + len(co_eval) == len(train) == counts["train"]
    rec = json.loads(co_eval[0])
    assert list(rec) == ["messages"]
    assert [m["role"] for m in rec["messages"]] == ["System", "User", "Chatbot"]
    assert rec["messages"][0]["content"] == TASK["prompt"]["system"]
    assert rec["messages"][2]["content"] in ("Yes", "No")
    test_statements = set(test["statement"])
    assert not any(json.loads(x)["messages"][1]["content"].split("\n")[0] in test_statements
                   for x in co_eval)  # the eval file is carved from train, never test
