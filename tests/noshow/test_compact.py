"""The `statements.style: compact` lever and the system-prompt lever of the no-show prompts.

Compact statements must carry every fact of the full ones (both texts are parsed back to the
same facts, which also equal the f_* features) in >= 30 % fewer SmolLM2 tokens; the f_*
features (what gbdt sees) do not depend on the style. `prompt.system: None` means no system
turn, and SmolLM2's chat template then inserts its own default system prompt (checked), so
`""` is the way to drop the instruction with that model.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from clinlm.noshow.statements import WEEKDAYS, build_statements
from clinlm.noshow.synthetic import generate_synthetic
from clinlm.noshow.task import NoshowStatements, NoshowTask
from clinlm.prompts import build_messages

SYSTEM = "You predict whether a patient will miss a medical appointment. Answer Yes or No."
QUESTION = "Will the patient miss this appointment?"

FULL = re.compile(
    r"^(?:A baby \(under 1 year\)|An? (?P<age>\d+)-year-old (?P<who>woman|man|girl|boy)) "
    r"from (?P<place>.+?), appointment on a (?P<day>\w+day), "
    r"booked (?:the same day|(?P<wait>\d+) days? ahead) \(scheduled at (?P<hour>\d+)h\)\. "
    r"Conditions: (?P<cond>.+?)(?:; disability level (?P<dis>\d+))?\. (?P<pron>She|He) "
    r"(?P<welfare>receives|does not receive) Bolsa Familia welfare\. "
    r"(?P<sms>An SMS reminder was sent|No SMS reminder was sent)\."
    r"(?: (?:No earlier appointments on record|Earlier appointments on record: "
    r"(?P<prior>\d+), of which (?P<missed>\d+) missed)\.)?$")
COMPACT = re.compile(
    r"^(?P<sex>[FM]) (?:<1|(?P<age>\d+))y, (?P<place>.+?), (?P<day>[A-Z][a-z]{2}), "
    r"booked (?:same day|(?P<wait>\d+)d ahead) at (?P<hour>\d+)h, (?P<cond>[a-z/+ ]+?)"
    r"(?:, disability (?P<dis>\d+))?, (?P<welfare>welfare|no welfare), (?P<sms>SMS|no SMS)"
    r"(?P<hist>, (?:no earlier appts|(?P<prior>\d+) earlier appts? (?P<missed>\d+) missed))?$")
CONDITIONS = ("hypertension", "diabetes", "alcoholism")


def _int(v: str | None) -> int:
    return int(v) if v is not None else 0


def _conditions(text: str, sep: str) -> dict[str, int]:
    present = set() if text.startswith("no ") else set(text.split(sep))
    assert present <= set(CONDITIONS), text
    return {c: int(c in present) for c in CONDITIONS}


def parse_full(s: str, history: bool) -> dict:
    m = FULL.match(s)
    assert m, f"full statement not understood: {s!r}"
    g = m.groupdict()
    return {"female": int(g["pron"] == "She"), "age": _int(g["age"]), "place": g["place"],
            "weekday": list(WEEKDAYS).index(g["day"]), "wait": _int(g["wait"]),
            "hour": int(g["hour"]), **_conditions(g["cond"], ", "), "handicap": _int(g["dis"]),
            "welfare": int(g["welfare"] == "receives"), "sms": int(g["sms"].startswith("An")),
            "history": (_int(g["prior"]), _int(g["missed"])) if history else None}


def parse_compact(s: str, history: bool) -> dict:
    m = COMPACT.match(s)
    assert m, f"compact statement not understood: {s!r}"
    g = m.groupdict()
    assert (g["hist"] is not None) == history, s
    return {"female": int(g["sex"] == "F"), "age": _int(g["age"]), "place": g["place"],
            "weekday": [d[:3] for d in WEEKDAYS].index(g["day"]), "wait": _int(g["wait"]),
            "hour": int(g["hour"]), **_conditions(g["cond"], "+"), "handicap": _int(g["dis"]),
            "welfare": int(g["welfare"] == "welfare"), "sms": int(g["sms"] == "SMS"),
            "history": (_int(g["prior"]), _int(g["missed"])) if history else None}


def from_features(row: pd.Series, history: bool) -> dict:
    return {"female": row.f_female, "age": row.f_age, "weekday": row.f_weekday,
            "wait": row.f_wait_days, "hour": row.f_scheduled_hour,
            "hypertension": row.f_hipertension, "diabetes": row.f_diabetes,
            "alcoholism": row.f_alcoholism, "handicap": row.f_handcap,
            "welfare": row.f_scholarship, "sms": row.f_sms_received,
            "history": (row.f_prior_appointments, row.f_prior_noshows) if history else None}


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """1000 synthetic appointments plus the rare cases forced in: a baby, disabilities, every
    condition at once, same-day bookings, article "An" ages."""
    df = generate_synthetic(1000, seed=3)
    df.loc[0, "Age"], df.loc[1, "Age"], df.loc[2, "Age"] = 0, 8, 83
    df.loc[3, ["Hipertension", "Diabetes", "Alcoholism"]] = 1
    df.loc[4, "Handcap"], df.loc[5, "Handcap"] = 1, 3
    df.loc[6, "ScheduledDay"] = df.loc[6, "AppointmentDay"]
    return df


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (and chat template) from the embedded GGUF (~5 s)."""
    from transformers import AutoTokenizer

    from clinlm.base_model import embedded_gguf
    gguf = embedded_gguf("embedded:smollm2")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.mark.parametrize("history", [True, False])
def test_compact_carries_every_fact_of_the_full_statement(raw, history):
    full = build_statements(raw, history=history)
    comp = build_statements(raw, history=history, style="compact")
    # the rare cases are really there (else the parsers would not be exercised)
    assert full["statement"].iloc[0].startswith("A baby") and comp["statement"].iloc[0].startswith(
        ("F <1y", "M <1y"))
    assert "booked the same day" in full["statement"].iloc[6]
    assert "hypertension+diabetes+alcoholism" in comp["statement"].iloc[3]
    for i, (f, c) in enumerate(zip(full["statement"], comp["statement"], strict=True)):
        facts = parse_full(f, history)
        assert parse_compact(c, history) == facts, (i, f, c)
        expected = from_features(full.iloc[i], history)
        assert {k: facts[k] for k in expected} == expected, (i, f)
    # same features (what gbdt sees), same ids and labels
    pd.testing.assert_frame_equal(full.drop(columns="statement"), comp.drop(columns="statement"))


def test_compact_is_at_least_30_percent_fewer_tokens(raw, smollm2_tokenizer):
    tok = smollm2_tokenizer

    def mean_tokens(texts: list[str]) -> float:
        return float(np.mean([len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]))

    full = build_statements(raw)["statement"].tolist()
    comp = build_statements(raw, style="compact")["statement"].tolist()
    n_full, n_comp = mean_tokens(full), mean_tokens(comp)
    assert n_comp <= 0.7 * n_full, (n_full, n_comp)  # measured: 69.1 -> 43.6 (-37 %)

    # and the whole prompt the sft method feeds (chat template, system + question)
    def prompt_tokens(texts: list[str], system: str | None) -> float:
        cfg = {"prompt": {"system": system, "question": QUESTION}}
        return mean_tokens([tok.apply_chat_template(build_messages(s, cfg), tokenize=False,
                                                    add_generation_prompt=True) for s in texts])

    p_full, p_comp = prompt_tokens(full, SYSTEM), prompt_tokens(comp, SYSTEM)
    p_comp_nosys = prompt_tokens(comp, "")
    system_tokens = len(tok(SYSTEM, add_special_tokens=False)["input_ids"])
    assert p_full - p_comp == pytest.approx(n_full - n_comp)  # only the statement changed
    assert p_comp - p_comp_nosys == system_tokens  # "" drops exactly the instruction's tokens
    assert p_comp_nosys < 0.65 * p_full  # measured: 107.1 -> 65.6 tokens per prompt


def test_style_is_a_validated_statements_key(raw, tmp_path):
    assert NoshowStatements().style == "full"
    with pytest.raises(ValueError, match="style"):
        NoshowTask().statement_settings({"statements": {"style": "short"}})
    with pytest.raises(ValueError, match="style"):
        build_statements(raw.head(3), style="short")
    path = tmp_path / "appointments.csv"
    raw.head(20).to_csv(path, index=False)
    table = NoshowTask().table_from_raw_csv({"statements": {"style": "compact"}}, path)
    assert table["statement"].str.match(COMPACT).all()


def test_no_system_turn_and_smollm2_default(smollm2_tokenizer):
    """`system: None` -> no system message; SmolLM2's template then adds its own default,
    `""` keeps an empty system turn (no instruction text at all)."""
    tok = smollm2_tokenizer
    none = build_messages("S", {"prompt": {"system": None, "question": QUESTION}}, "Yes")
    assert [m["role"] for m in none] == ["user", "assistant"]
    empty = build_messages("S", {"prompt": {"system": "", "question": QUESTION}})
    assert [m["role"] for m in empty] == ["system", "user"] and empty[0]["content"] == ""
    text_none = tok.apply_chat_template(none[:1], tokenize=False, add_generation_prompt=True)
    text_empty = tok.apply_chat_template(empty, tokenize=False, add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in text_none  # the template's default
    assert text_empty.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nS\n")
