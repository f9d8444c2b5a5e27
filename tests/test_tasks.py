"""clinlm.tasks: the registry, the typed download/statements sections, the thin lookups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import BaseModel

from clinlm import tasks
from clinlm.noshow.sources import DEFAULT_N_SYNTHETIC, KAGGLE_DATASET, NoshowDownload
from clinlm.noshow.synthetic import generate_synthetic
from clinlm.noshow.task import NoshowStatements, NoshowTask
from clinlm.tasks import GENERIC_KINDS, TASKS, Task, get_task, parse_section
from clinlm.vascular.task import VascularAgeTask, VascularDownload, VascularStatements

ROOT = Path(__file__).resolve().parents[1]
#: the tasks named by their section (the generic kinds serve any name: tests/table/)
BUILT_IN = [name for name in TASKS if name not in GENERIC_KINDS]


def test_registry_names_classes() -> None:
    assert set(TASKS) == {"noshow", "vascular_age", "table"} and GENERIC_KINDS == ("table",)
    for name in BUILT_IN:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        for model in (task.download_config, task.statements_config):
            assert issubclass(model, BaseModel) and model.model_config["extra"] == "forbid"
    assert isinstance(get_task("noshow"), NoshowTask)
    assert isinstance(get_task("vascular_age"), VascularAgeTask)


def test_unknown_task_lists_known() -> None:
    with pytest.raises(ValueError, match=r"tasks\.nosho: unknown task; a built-in task is one "
                                         r"of \['noshow', 'vascular_age'\], any other table "
                                         "declares kind: table"):
        get_task("nosho")
    with pytest.raises(ValueError, match="known|built-in task is one of"):
        tasks.download("nosho", {}, 0, Path("unused"))
    with pytest.raises(ValueError, match=r"tasks\.table: 'table' is a kind, not a task name"):
        get_task("table")
    with pytest.raises(ValueError, match=r"tasks\.x\.kind: 'noshow' is not a kind"):
        get_task("x", {"kind": "noshow"})
    assert get_task("my_table", {"kind": "table"}).name == "my_table"


def test_defaults_are_the_code_defaults() -> None:
    assert NoshowDownload().model_dump() == {
        "source": "auto", "csv_path": None, "csv_separator": None, "csv_encoding": "utf-8",
        "n_synthetic": DEFAULT_N_SYNTHETIC, "kaggle_dataset": KAGGLE_DATASET}
    assert NoshowStatements().model_dump() == {"history": True, "style": "full"}
    assert VascularDownload().model_dump() == {
        "source": "synthetic", "n_synthetic": 1500, "noise_sd": 4.0, "ptbxl_dir": None,
        "target_column": "age", "max_records": None, "sampling_rate": 100, "csv_path": None,
        "csv_separator": None, "csv_encoding": "utf-8", "missing_values": None,
        "id_column": None, "csv_target_column": "vascular_age", "group_column": None,
        "columns": {}, "max_categories": 20, "processes": 1}
    assert VascularStatements().model_dump() == {"include_age": None,
                                                 "include_risk_factors": None}


def test_params_yaml_sections_validate() -> None:
    from ruamel.yaml import YAML

    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    for name, section in params["tasks"].items():
        task = get_task(name, section)
        task.download_settings(section)
        task.statement_settings(section)


@pytest.mark.parametrize("name", BUILT_IN)
def test_typo_and_bad_source_are_errors(name: str) -> None:
    model = get_task(name).download_config
    where = f"tasks.{name}.download"
    with pytest.raises(ValueError, match=rf"{where}\.n_synthtic: unknown key; allowed: .*"
                                         "n_synthetic"):
        parse_section(model, {"n_synthtic": 300}, where)
    with pytest.raises(ValueError, match=rf"{where}\.source: .*'s3'"):
        parse_section(model, {"source": "s3"}, where)
    with pytest.raises(ValueError):  # the pydantic model itself refuses both too
        model.model_validate({"n_synthtic": 300})
    with pytest.raises(ValueError):
        model.model_validate({"source": "s3"})
    with pytest.raises(ValueError, match=rf"{where}\.n_synthetic"):
        parse_section(model, {"n_synthetic": "many"}, where)


def test_null_is_default_and_types() -> None:
    cfg = parse_section(VascularDownload, {"n_synthetic": None, "noise_sd": 2, "max_records": 5},
                        "x")
    assert cfg.n_synthetic == 1500 and cfg.noise_sd == 2.0 and cfg.max_records == 5
    with pytest.raises(ValueError, match=r"x\.sampling_rate: 250 not one of 100 or 500"):
        parse_section(VascularDownload, {"sampling_rate": 250}, "x")
    with pytest.raises(ValueError, match=r"tasks\.vascular_age\.statements\.history: unknown"):
        get_task("vascular_age").statement_settings({"statements": {"history": True}})
    with pytest.raises(ValueError, match=r"tasks\.noshow\.statements\.include_age: unknown"):
        get_task("noshow").statement_settings({"statements": {"include_age": True}})


def test_noshow_through_registry(tmp_path: Path) -> None:
    cfg = {"download": {"source": "synthetic", "n_synthetic": 120}, "statements": {}}
    info = tasks.download("noshow", cfg, 3, tmp_path)
    assert info["data_source"] == "synthetic" and info["n_rows"] == 120
    assert (tmp_path / "appointments.csv").is_file()
    table = tasks.build_table("noshow", cfg, tmp_path)
    assert len(table) == 120 and "f_prior_noshows" in table.columns
    short = tasks.build_table("noshow", {"statements": {"history": False}}, tmp_path)
    assert "f_prior_noshows" not in short.columns
    with pytest.raises(ValueError, match="n_synthtic"):
        tasks.download("noshow", {"download": {"n_synthtic": 3}}, 0, tmp_path)


def test_noshow_table_from_csv(tmp_path: Path) -> None:
    raw = generate_synthetic(30, seed=2)
    labeled, unlabeled = tmp_path / "a.csv", tmp_path / "b.csv"
    raw.to_csv(labeled, index=False)
    raw.drop(columns="No-show").to_csv(unlabeled, index=False)
    t1 = tasks.table_from_csv("noshow", {}, labeled)
    t2 = tasks.table_from_csv("noshow", {}, unlabeled)
    assert t1["label"].notna().all() and t2["label"].isna().all()
    assert len(t1) == len(t2) == 30
    # a prepared table (id + statement) is used as is, for any task
    ready = tmp_path / "ready.csv"
    pd.DataFrame({"id": ["007"], "statement": ["A patient."]}).to_csv(ready, index=False)
    for name in BUILT_IN:
        got = tasks.table_from_csv(name, {}, ready)
        assert got["id"].tolist() == ["007"] and got["label"].isna().all()


def test_every_download_key_is_in_params_yaml() -> None:
    """`dvc exp run -S tasks.<t>.download.<key>=...` needs no `+` (a `+` that fails once leaves
    params.yaml edited, and the same command then fails): every key is present."""
    from ruamel.yaml import YAML

    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    for name, section in params["tasks"].items():
        task = get_task(name, section)
        for kind, model in (("download", task.download_config),
                            ("statements", task.statements_config)):
            missing = set(model.model_fields) - set(section.get(kind) or {})
            assert not missing, f"tasks.{name}.{kind} lacks {sorted(missing)} in params.yaml"
