"""One case typed into a form (``Task.table_from_records``): nothing nobody entered is assumed.

An optional field left empty is said as "not recorded" in the statement and is NaN in its
``f_*`` feature (never the 0 or the example a form used to fill in); a required one is refused
naming the field and its label; every field has a readable label. The pipeline's own tables
(every value present) keep their statements unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from clinlm.io import DataError
from clinlm.tasks import get_task
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
NOSHOW = {"Gender": "F", "Age": 45, "ScheduledDay": "2016-04-25", "AppointmentDay": "2016-05-02",
          "Neighbourhood": "JARDIM CAMBURI"}
FLAGS = ("Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap", "SMS_received")


def noshow_cfg(style: str = "full") -> dict:
    return {**PARAMS["tasks"]["noshow"], "statements": {"history": True, "style": style}}


@pytest.mark.parametrize("style", ["full", "compact"])
def test_noshow_empty_optional_fields_are_said_not_recorded(style):
    task = get_task("noshow")
    t = task.table_from_records(noshow_cfg(style), [{**NOSHOW, "Hipertension": 1}, {
        **NOSHOW, "ScheduledDay": "2016-04-25 10:30", "Scholarship": 1, "Hipertension": 0,
        "Diabetes": "yes", "Alcoholism": 0, "Handcap": 2, "SMS_received": 0}])
    empty, full = t.iloc[0], t.iloc[1]
    assert "not recorded" not in full["statement"]
    for col in ("f_scholarship", "f_diabetes", "f_alcoholism", "f_handcap", "f_sms_received",
                "f_scheduled_hour"):
        assert math.isnan(empty[col]), col
    assert empty["f_hipertension"] == 1 and full["f_scheduled_hour"] == 10
    assert (full["f_scholarship"], full["f_diabetes"], full["f_handcap"]) == (1, 1, 2)
    s = empty["statement"]
    if style == "full":
        assert "Conditions: hypertension; diabetes and alcoholism not recorded; disability " \
               "level not recorded. Bolsa Familia welfare not recorded. SMS reminder not " \
               "recorded." in s
        assert "(booking time not recorded)" in s and "scheduled at" not in s
        assert "(scheduled at 10h)" in full["statement"]
        assert "Conditions: diabetes; disability level 2. She receives" in full["statement"]
    else:
        assert ("hypertension; diabetes and alcoholism not recorded, disability not recorded, "
                "welfare not recorded, SMS not recorded") in s
        assert "time not recorded" in s and "at 10h" in full["statement"]


def test_noshow_pipeline_statements_unchanged_without_unrecorded():
    """A table with every value (the Kaggle data) gets the statements it always got."""
    from clinlm.noshow.schema import validate
    from clinlm.noshow.statements import build_statements
    from clinlm.noshow.synthetic import generate_synthetic

    raw = validate(generate_synthetic(200, seed=3), "synthetic")[0]
    for style in ("full", "compact"):
        plain = build_statements(raw, style=style)
        none = pd.DataFrame(False, index=raw.index, columns=[*FLAGS, "scheduled_hour"])
        told = build_statements(raw, style=style, unrecorded=none)
        pd.testing.assert_frame_equal(plain, told)
        assert not plain["statement"].str.contains("not recorded").any()
        assert plain["f_hipertension"].dtype == np.int64


@pytest.mark.parametrize("name,label", [("Age", "Age"), ("Gender", "Sex"),
                                        ("Neighbourhood", "Neighbourhood")])
def test_noshow_required_field_refused_by_name_and_label(name, label):
    rec = {k: v for k, v in NOSHOW.items() if k != name}
    with pytest.raises(DataError) as e:
        get_task("noshow").table_from_records(noshow_cfg(), [NOSHOW, rec])
    assert e.value.row == 2 and e.value.column == name
    assert f"missing required field: {label}" in str(e.value)


def test_vascular_empty_fields_are_said_not_recorded():
    task = get_task("vascular_age")
    cfg = PARAMS["tasks"]["vascular_age"]
    full = {"age": 50, "sex": "F", "height_cm": 170, "weight_kg": 80, "sbp_mmhg": 120,
            "bp_treated": "no", "total_chol_mgdl": 200, "hdl_mgdl": 50, "smoker": "no",
            "diabetes": "no", "hr_bpm": 60, "pr_ms": 160, "qrs_ms": 90, "qt_ms": 400,
            "qtc_ms": 410, "p_axis_deg": 40, "qrs_axis_deg": 30, "t_axis_deg": 40,
            "sdnn_ms": 40, "rmssd_ms": 30}
    t = task.table_from_records(cfg, [{"age": 58, "sex": "M", "sbp_mmhg": 130, "hr_bpm": 70},
                                      {"age": 40}, full])
    some, bare, given = t["statement"]
    assert some.endswith("Not recorded: height, weight, blood pressure treatment, total "
                         "cholesterol, HDL cholesterol, smoking, diabetes, PR, QRS, QT, QTc, "
                         "P axis, QRS axis, T axis, SDNN, RMSSD.")
    assert "systolic blood pressure 130 mmHg" in some and "heart rate 70 bpm" in some
    # every ECG item empty: the one word, not ten
    assert bare == ("A 40-year-old person. Not recorded: sex, height, weight, systolic blood "
                    "pressure, blood pressure treatment, total cholesterol, HDL cholesterol, "
                    "smoking, diabetes, ECG.")
    assert "Not recorded" not in given
    assert math.isnan(t["f_total_chol_mgdl"].iloc[0]) and t["f_total_chol_mgdl"].iloc[2] == 200


def test_vascular_pipeline_statements_keep_missing_values_out():
    """The pipeline's tables (say_unrecorded off) leave a missing value out, as trained."""
    from clinlm.vascular.statements import build_table
    raw = pd.DataFrame({"id": ["a", "b"], "age": [50, 60], "sex": ["M", "F"],
                        "qt_ms": [400, np.nan], "vascular_age": [55.0, 61.0]})
    plain = build_table(raw)
    assert plain["statement"].tolist() == ["A 50-year-old man. ECG: QT 400 ms.",
                                           "A 60-year-old woman."]
    told = build_table(raw, say_unrecorded=True)
    assert told["statement"].tolist() == ["A 50-year-old man. ECG: QT 400 ms.",
                                          "A 60-year-old woman. Not recorded: ECG."]


@pytest.mark.parametrize("task", ["noshow", "vascular_age"])
def test_every_field_has_a_readable_label(task):
    fields = get_task(task).input_fields(PARAMS["tasks"][task])
    for f in fields:
        label = f["label"]
        assert label and label[0].isupper() and "_" not in label, f
        assert label.lower() != f["name"].lower() or f["name"].isalpha(), f
        assert "default" not in f  # no value is ever assumed for an empty field
    by_name = {f["name"]: f for f in fields}
    if task == "noshow":
        assert by_name["Hipertension"]["label"] == "Hypertension"
        assert by_name["Age"]["unit"] == "years"
    else:
        assert (by_name["sbp_mmhg"]["label"], by_name["sbp_mmhg"]["unit"]) == (
            "Systolic blood pressure", "mmHg")
        assert by_name["qrs_axis_deg"]["unit"] == "°"
