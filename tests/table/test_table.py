"""``kind: table`` tasks: sources, column selection and inference, targets, statements, the
prediction paths, and every bad input named by its key (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinlm.io import DataError
from clinlm.params import ParamsError, validate
from clinlm.table.columns import feature_name, significant_decimals
from clinlm.table.task import COLUMNS, TABLE
from clinlm.tasks import get_task

BREAST = {"kind": "table", "type": "classification",
          "download": {"source": "sklearn", "dataset": "breast_cancer",
                       "positive_label": "malignant", "include": ["mean *", "worst *"]},
          "prompt": {"question": "Is this mass malignant?"}, "answer": {}}
DIABETES = {"kind": "table", "type": "regression", "answer": {"min": 25, "max": 346},
            "download": {"source": "sklearn", "dataset": "diabetes",
                         "columns": {"sex": {"kind": "category"},
                                     "bmi": {"label": "body mass index", "unit": "kg/m2"},
                                     "s1": {"label": "total cholesterol", "unit": "mg/dL",
                                            "section": "Blood serum"}},
                         "include": ["*"]},
            "prompt": {"question": "What is the disease progression?"}}


def project(tmp_path: Path, monkeypatch, name: str, cfg: dict) -> tuple[object, Path]:
    """Download ``cfg`` as task ``name`` into a scratch project (cwd), as the stage does."""
    monkeypatch.chdir(tmp_path)
    task = get_task(name, cfg)
    raw = tmp_path / "data" / "raw" / name
    info = task.download(cfg, 0, raw)
    (raw / "download.json").write_text(json.dumps(info))
    return task, raw


def csv_task(path: Path, **download) -> dict:
    return {"kind": "table", "type": "classification", "answer": {},
            "prompt": {"question": "Sepsis?"},
            "download": {"source": "csv", "csv_path": str(path), "target_column": "sepsis",
                         "positive_label": "yes", **download}}


def sepsis_csv(tmp_path: Path, n: int = 60, **extra) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "mrn": [f"P{i:03d}" for i in range(n)],
        "Lactate (mmol/L)": rng.uniform(0.5, 8, n).round(2),
        "HR": rng.integers(50, 150, n),
        "ward": rng.choice(["ICU", "ED", "medical"], n),
        "on_pressors": rng.choice(["Y", "N"], n),
        "note": [f"free text {i}" for i in range(n)],
        "sepsis": np.where(rng.uniform(size=n) < 0.4, "yes", "no"),
        **extra})
    path = tmp_path / "sepsis.csv"
    df.to_csv(path, index=False)
    return path


# ---- sources, selection, targets ---------------------------------------------------------

def test_breast_cancer_by_pattern(tmp_path, monkeypatch):
    task, raw = project(tmp_path, monkeypatch, "breast_cancer", BREAST)
    info = json.loads((raw / "download.json").read_text())
    used = [u["column"] for u in info["used"]]
    assert len(used) == 20 and all(u.startswith(("mean ", "worst ")) for u in used)
    assert all(u["kind"] == "number" and u["inferred"] for u in info["used"])
    reasons = {d["column"]: d["reason"] for d in info["dropped"]}
    assert reasons["target"] == "the target" and len(reasons) == 11
    assert reasons["radius error"].startswith("not mapped and matched by no include")
    assert info["target"]["counts"] == {"Yes": 212, "No": 357}  # sklearn's 212 malignant
    table = task.build_table(BREAST, raw)
    assert len(table) == 569 and set(table["label"]) == {"Yes", "No"}
    first = table.iloc[0]
    # the statement says what f_* holds: 3 significant digits of each column's median
    assert first["statement"].startswith("Mean radius 18.0, mean texture 10.4, mean perimeter "
                                         "122.8, mean area 1001,")
    assert first["f_mean_radius"] == 18.0 and first["f_mean_area"] == 1001.0
    assert first["f_mean_smoothness"] == 0.1184  # median 0.096: 4 decimals


def test_diabetes_mapping_sections_and_regression(tmp_path, monkeypatch):
    task, raw = project(tmp_path, monkeypatch, "diabetes", DIABETES)
    table = task.build_table(DIABETES, raw)
    assert len(table) == 442 and table["label"].between(25, 346).all()
    s = table["statement"].iloc[0]
    assert s.startswith("Age 59, sex: 2, body mass index 32.1 kg/m2, bp 101")
    assert " Blood serum: total cholesterol 157 mg/dL." in s
    assert table["f_sex"].iloc[0] == "2" and table["f_bmi"].iloc[0] == 32.1
    spec = json.loads((raw / COLUMNS).read_text())
    sex = next(c for c in spec["columns"] if c["column"] == "sex")
    assert sex["kind"] == "category" and sex["categories"] == ["1", "2"] and not sex["inferred"]


def test_csv_inference_drops_free_text_and_reports(tmp_path, monkeypatch):
    path = sepsis_csv(tmp_path)
    cfg = csv_task(path, id_column="mrn", max_categories=5)
    task, raw = project(tmp_path, monkeypatch, "sepsis", cfg)
    info = json.loads((raw / "download.json").read_text())
    kinds = {u["column"]: u["kind"] for u in info["used"]}
    assert kinds == {"Lactate (mmol/L)": "number", "HR": "number", "ward": "category",
                     "on_pressors": "boolean"}
    reasons = {d["column"]: d["reason"] for d in info["dropped"]}
    assert reasons["mrn"] == "the id" and "60 different values" in reasons["note"]
    table = task.build_table(cfg, raw)
    assert table["id"].tolist()[:2] == ["P000", "P001"]
    assert table["f_on_pressors"].isin([0.0, 1.0]).all()
    said = table["statement"].str.extract(r"on pressors: (\w+)\.")[0]
    assert said.map({"yes": 1.0, "no": 0.0}).tolist() == table["f_on_pressors"].tolist()
    assert feature_name("Lactate (mmol/L)") == "lactate_mmol_l"


def test_parquet_source(tmp_path, monkeypatch):
    csv = sepsis_csv(tmp_path)
    pq = tmp_path / "sepsis.parquet"
    pd.read_csv(csv).to_parquet(pq)
    tables = []
    for sub, path in (("a", csv), ("b", pq)):
        (tmp_path / sub).mkdir()
        cfg = csv_task(path, exclude=["note"])
        task, raw = project(tmp_path / sub, monkeypatch, "s", cfg)
        tables.append(task.build_table(cfg, raw))
    a, b = tables
    pd.testing.assert_frame_equal(a, b)


def test_out_of_range_policy(tmp_path, monkeypatch):
    path = sepsis_csv(tmp_path)
    strict = csv_task(path, exclude=["note"], columns={"HR": {"range": [60, 140]}})
    with pytest.raises(DataError, match=r"column 'HR'.*outside \[60, 140\].*widen "
                                        r"tasks\.sepsis\.download\.columns\.HR\.range"):
        get_task("sepsis", strict).download(strict, 0, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written
    lenient = csv_task(path, exclude=["note"], out_of_range="missing",
                       columns={"HR": {"range": [60, 140]}, "Lactate (mmol/L)": {},
                                "ward": {}, "on_pressors": {}})
    task, raw = project(tmp_path, monkeypatch, "sepsis", lenient)
    info = json.loads((raw / "download.json").read_text())
    hr = pd.read_csv(path)["HR"]
    n_out = int(((hr < 60) | (hr > 140)).sum())
    assert n_out > 0 and info["out_of_range_read_as_missing"] == {"HR": n_out}
    assert pd.read_parquet(raw / TABLE)["hr"].isna().sum() == n_out


def test_template(tmp_path, monkeypatch):
    cfg = {**DIABETES, "statements": {"template": "A patient aged {age} with a BMI of {bmi}."}}
    task, raw = project(tmp_path, monkeypatch, "diabetes", cfg)
    assert task.build_table(cfg, raw)["statement"].iloc[0] == "A patient aged 59 with a BMI of " \
                                                             "32.1 kg/m2."
    bad = {**DIABETES, "statements": {"template": "Aged {age}, glucose {glucose}."}}
    with pytest.raises(ValueError, match=r"tasks\.diabetes\.statements\.template: \['glucose'\] "
                                         "name no used column"):
        task.build_table(bad, raw)


def test_significant_decimals():
    cells = pd.Series(["0.07871", "0.1", "0.05"])
    assert significant_decimals(pd.to_numeric(cells), cells) == 4
    whole = pd.Series(["12", "130", "7"])
    assert significant_decimals(pd.to_numeric(whole), whole) == 0  # never invents decimals


# ---- bad input: a clear error naming the key, nothing written ---------------------------

@pytest.mark.parametrize("change,match", [
    ({"columns": {"Lactat": {}}}, r"tasks\.sepsis\.download\.columns names \['Lactat'\], not "
                                  "in the table"),
    ({"target_column": "outcome"}, r"no column 'outcome' \(tasks\.sepsis\.download\."
                                   r"target_column\)"),
    ({"positive_label": "septic"}, r"positive_label: 'septic' is not a label of 'sepsis'; its "
                                   r"labels are \['no', 'yes'\]"),
    ({"include": ["lab_*"]}, r"tasks\.sepsis\.download\.include: pattern 'lab_\*' matches no "
                             "column"),
    ({"columns": {"note": {"kind": "category"}}}, r"columns\.note: a category with 60 values "
                                                  r"\(more than max_categories=20\)"),
    ({"columns": {"HR": {"codes": {"1": "x"}}}}, r"columns\.HR\.codes: a number column has no "
                                                 "codes"),
    ({"columns": {"sepsis": {}}}, r"columns\.sepsis: this column is the target, not a feature"),
])
def test_bad_mapping_names_the_key(tmp_path, change, match):
    cfg = csv_task(sepsis_csv(tmp_path))
    cfg["download"].update(change)
    with pytest.raises((ValueError, DataError), match=match):
        get_task("sepsis", cfg).download(cfg, 0, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("target,match", [
    (["yes"] * 10, r"the target has one label only \(\['yes'\]\)"),
    (["a", "b", "c"] * 4, r"the target has 3 labels .*set tasks\.t\.type: multiclass"),
    (["yes", "no", "", "no"], r"row 3, column 'sepsis': missing target"),
])
def test_bad_targets(tmp_path, target, match):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(len(target)), "sepsis": target}).to_csv(path, index=False)
    cfg = csv_task(path)
    with pytest.raises(DataError, match=match):
        get_task("t", cfg).download(cfg, 0, tmp_path / "raw")


def test_a_label_read_as_missing_is_reported_as_such(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(4), "sepsis": ["yes", "none", "yes", "none"]}).to_csv(path,
                                                                                 index=False)
    cfg = csv_task(path)  # "none" is a missing-value marker: say so, not "one label only"
    with pytest.raises(DataError, match=r"row 2, column 'sepsis': missing target"):
        get_task("t", cfg).download(cfg, 0, tmp_path / "raw")


def test_positive_label_is_declared(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(6), "sepsis": [0, 1] * 3}).to_csv(path, index=False)
    cfg = csv_task(path)
    del cfg["download"]["positive_label"]
    with pytest.raises(ValueError, match=r"tasks\.t\.download\.positive_label: say which label "
                                         r"the model answers Yes; the target's labels are "
                                         r"\['0', '1'\]"):
        get_task("t", cfg).download(cfg, 0, tmp_path / "raw")
    cfg["download"]["positive_label"] = 1  # YAML's 1 matches the cells 1 / 1.0
    info = get_task("t", cfg).download(cfg, 0, tmp_path / "raw")
    assert info["target"]["counts"] == {"Yes": 3, "No": 3}


def test_duplicate_ids_listed(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b", "a"], "x": [1, 2, 3], "sepsis": ["yes", "no", "no"]}
                 ).to_csv(path, index=False)
    cfg = csv_task(path, id_column="id")
    with pytest.raises(DataError, match=r"(?s)row 1, column 'id': duplicate id \('a'\).*rows 1 "
                                        r"\('a'\), 3 \('a'\)"):
        get_task("t", cfg).download(cfg, 0, tmp_path / "raw")


def test_params_validation_of_a_table_section():
    from ruamel.yaml import YAML

    from tests.conftest import ROOT
    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    validate(params, library_models=[])  # the shipped breast_cancer / diabetes blocks
    for broken, match in [
        ({"answer": {}}, r"tasks\.diabetes\.answer: a regression table declares the range"),
        ({"prompt": {"question": " "}}, r"tasks\.diabetes\.prompt\.question is empty"),
        ({"kind": "tabel"}, r"tasks\.diabetes\.kind: 'tabel' is not a kind"),
        ({"download": {"source": "sklearn", "dataset": "iris"}}, r"tasks\.diabetes\.download"
                                                                 r"\.dataset"),
        ({"download": {"source": "csv"}}, r"tasks\.diabetes\.download\.csv_path is required"),
    ]:
        p = json.loads(json.dumps(params))
        p["tasks"]["diabetes"].update(broken)
        with pytest.raises(ParamsError, match=match):
            validate(p, library_models=[])


# ---- the prediction paths -----------------------------------------------------------------

def test_screen_csv_refuses_bad_rows_in_place(tmp_path, monkeypatch):
    path = sepsis_csv(tmp_path)
    cfg = csv_task(path, id_column="mrn", exclude=["note"],
                   columns={"HR": {"range": [30, 250]}, "Lactate (mmol/L)": {}, "ward": {},
                            "on_pressors": {}})
    task, raw = project(tmp_path, monkeypatch, "sepsis", cfg)
    train = task.build_table(cfg, raw)
    new = pd.read_csv(path).drop(columns=["sepsis"]).head(5).astype(object)
    new.loc[1, "HR"] = "fast"
    new.loc[2, "ward"] = "cardiology"      # a value training never saw
    new.loc[3, "HR"] = 400                 # outside its range
    new.to_csv(tmp_path / "new.csv", index=False)
    got = task.screen_csv(cfg, tmp_path / "new.csv")
    assert got.n == 5 and got.rows.tolist() == [1, 5]
    assert got.refused[2] == ("HR", "not a number: got 'fast'")
    assert got.refused[3][0] == "ward" and "training never saw" in got.refused[3][1]
    assert got.refused[4][0] == "HR" and "outside [30, 250]" in got.refused[4][1]
    assert got.ids == ["P000", "P001", "P002", "P003", "P004"]
    # an accepted row reads exactly as it did in training, whatever its batch-mates
    assert got.table["statement"].tolist() == train["statement"].iloc[[0, 4]].tolist()
    alone = task.screen_csv(cfg, _one_row(tmp_path, new.iloc[[4]]))
    assert alone.table["statement"].tolist() == [train["statement"].iloc[4]]


def _one_row(tmp_path: Path, row: pd.DataFrame) -> Path:
    path = tmp_path / "one.csv"
    row.to_csv(path, index=False)
    return path


def test_records_and_fields(tmp_path, monkeypatch):
    task, raw = project(tmp_path, monkeypatch, "diabetes", DIABETES)
    fields = {f["name"]: f for f in task.input_fields(DIABETES)}
    assert list(fields)[:3] == ["age", "sex", "bmi"]
    assert fields["sex"]["kind"] == "choice" and fields["sex"]["choices"] == ["1", "2"]
    assert fields["bmi"]["unit"] == "kg/m2" and fields["bmi"]["label"] == "Body mass index"
    got = task.screen_records(DIABETES, [{"age": 50, "sex": "1", "bmi": 30},
                                         {"age": 50, "sex": "3"}, {}, {"bmj": 1}])
    assert got.rows.tolist() == [1]
    assert got.refused[2][0] == "sex" and got.refused[3] == (None, "no field given")
    assert got.refused[4][0] == "bmj" and "unknown field" in got.refused[4][1]
    s = got.table["statement"].iloc[0]
    assert s.startswith("Age 50, sex: 1, body mass index 30.0 kg/m2.")
    assert s.endswith("Not recorded: bp, s2, s3, s4, s5, s6, total cholesterol.") or \
        "Not recorded: bp" in s


def test_prediction_needs_the_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"columns\.json: not found: run the pipeline's download "
                                        "stage for diabetes first"):
        get_task("diabetes", DIABETES).input_fields(DIABETES)


def test_every_task_has_the_sections_dvc_reads():
    """DVC stops on a params key a stage lists that params.yaml lacks ("Parameters
    'tasks.x.format' are missing"): each task section has every one the task stages read."""
    import re

    import yaml

    from tests.conftest import ROOT
    dvc = (ROOT / "dvc.yaml").read_text()
    keys = set(re.findall(r"tasks\.\$\{(?:key|item\.task)\}\.(\w+)", dvc))
    assert {"download", "statements", "split", "format", "prompt", "answer", "type"} <= keys
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, section in params["tasks"].items():
        assert not keys - set(section), (name, sorted(keys - set(section)))


def test_the_page_says_what_yes_means(tmp_path, monkeypatch):
    from clinlm.runinfo import yes_means
    project(tmp_path, monkeypatch, "breast_cancer", BREAST)
    assert yes_means("breast_cancer") == " (Yes = target malignant, No = benign)"
    assert yes_means("noshow") == ""  # a built-in task's Yes is its own


def test_vlm_on_a_table_is_refused_with_the_reason():
    from ruamel.yaml import YAML

    from tests.conftest import ROOT
    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    params["runs"]["vlm"] = {"bc-vlm": {"task": "breast_cancer", "model": "smolvlm-ecg",
                                        "base": "smolvlm-ecg"}}
    with pytest.raises(ParamsError, match=r"runs\.vlm\.bc-vlm: the vlm method reads ECG "
                                          r"pictures, and task 'breast_cancer' \(kind: table\)"):
        validate(params, library_models=[])


def test_wide_table_selected_by_pattern(tmp_path, monkeypatch):
    """An ECG-export-like table: 6 leads x 40 measurements taken by one pattern, an id and a
    free-text column left out with their reasons; the baseline learns from the result."""
    rng = np.random.default_rng(1)
    n = 120
    cols = {f"chV{lead}_{k}": rng.normal(size=n).round(3) for lead in range(1, 7)
            for k in range(40)}
    df = pd.DataFrame({"rec": [f"r{i}" for i in range(n)], **cols,
                       "comment": [f"note {i}" for i in range(n)]})
    df["afib"] = np.where(df["chV1_0"] + rng.normal(scale=0.5, size=n) > 0, "AF", "SR")
    df.to_csv(tmp_path / "wide.csv", index=False)
    cfg = {"kind": "table", "type": "classification", "answer": {},
           "prompt": {"question": "Atrial fibrillation?"},
           "download": {"source": "csv", "csv_path": str(tmp_path / "wide.csv"),
                        "id_column": "rec", "target_column": "afib", "positive_label": "AF",
                        "include": ["chV*_*"]}}
    task, raw = project(tmp_path, monkeypatch, "wide", cfg)
    info = json.loads((raw / "download.json").read_text())
    assert len(info["used"]) == 240 and all(u["kind"] == "number" for u in info["used"])
    reasons = {d["column"]: d["reason"] for d in info["dropped"]}
    assert set(reasons) == {"rec", "comment", "afib"}
    assert reasons["comment"].startswith("not mapped and matched by no include")
    table = task.build_table(cfg, raw)
    assert table.shape == (120, 4 + 240) and table["id"].iloc[0] == "r0"

    from clinlm.methods import get_method
    from clinlm.methods.interface import Run
    run = Run(task="wide", model="gbdt", task_type="classification", seed=0,
              cfg={"method": "gbdt", "hist_gbdt": {"max_iter": 50, "min_samples_leaf": 5}},
              task_cfg=cfg, model_dir=tmp_path / "m", data_dir=tmp_path)
    gbdt = get_method("gbdt")
    gbdt.train(run, table.iloc[:90])
    pred = gbdt.predict(run, table.iloc[90:])
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(table["label"].iloc[90:] == "Yes", pred["p_yes"]) > 0.7
