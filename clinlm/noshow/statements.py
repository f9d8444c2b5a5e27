"""Appointment rows -> one English statement each, plus the label and numeric features.

Leakage rule: a patient's history (earlier appointments, earlier no-shows) counts only
appointments whose *day* is strictly before this appointment's day. Outcomes of other
appointments on the same day are not known yet when this one is predicted, so they never
count. Patient and appointment ids are kept as ``id``/``group`` columns for bookkeeping
and splitting, never written into a statement.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

WEEKDAYS = np.array(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"])
STYLES = ("full", "compact")
#: the Kaggle columns a form may leave empty (then said "not recorded", never assumed 0)
OPTIONAL_FLAGS = ("Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap",
                  "SMS_received")
#: key of ``unrecorded`` for a booking given as a day without its time (no hour to tell)
HOUR = "scheduled_hour"
FEATURES = [
    "f_age", "f_female", "f_scholarship", "f_hipertension", "f_diabetes", "f_alcoholism",
    "f_handcap", "f_sms_received", "f_wait_days", "f_weekday", "f_scheduled_hour",
    "f_prior_appointments", "f_prior_noshows", "f_neighbourhood",
]


def history_counts(patient: pd.Series, day: pd.Series, noshow: pd.Series) -> pd.DataFrame:
    """Per row: the patient's appointments and no-shows on days strictly before this row's day.

    Vectorized: aggregate per (patient, day), take an exclusive cumulative sum per patient,
    then map back to the rows. Same-day appointments never see each other.
    """
    frame = pd.DataFrame({"p": patient.to_numpy(), "d": day.to_numpy(),
                          "y": noshow.to_numpy().astype(np.int64)})
    per_day = frame.groupby(["p", "d"], sort=True).agg(n=("y", "size"), y=("y", "sum"))
    cum = per_day.groupby(level="p").cumsum()
    before = cum - per_day  # exclusive: everything on earlier days only
    idx = pd.MultiIndex.from_arrays([frame["p"], frame["d"]])
    out = before.reindex(idx)
    return pd.DataFrame({"prior_appointments": out["n"].to_numpy(),
                         "prior_noshows": out["y"].to_numpy()}, index=patient.index)


def _plural(n: pd.Series, one: str, many: str) -> pd.Series:
    return np.where(n == 1, one, many)


def build_statements(raw: pd.DataFrame, history: bool = True, style: str = "full",
                     unrecorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """Turn a validated Kaggle-schema table into ``id, group, statement, label, f_*`` columns.

    ``history=False`` leaves the patient-history sentence and features out (an ablation).
    ``style``: ``full`` (English sentences) or ``compact`` (the same facts in ~37 % fewer
    tokens, see :func:`compact_statements`); the ``f_*`` features are the same either way.
    ``unrecorded``: boolean columns named after :data:`OPTIONAL_FLAGS` and :data:`HOUR`
    (rows aligned with ``raw``), True where nobody gave that value (a form left empty): the
    statement then says "hypertension not recorded" instead of "no hypertension", and the
    ``f_*`` feature is NaN, so an answer is never computed from a value nobody entered. The
    Kaggle table has every value, so the training statements never use it.
    """
    if style not in STYLES:
        raise ValueError(f"tasks.noshow.statements.style: {style!r} not one of {', '.join(STYLES)}")
    sched = pd.to_datetime(raw["ScheduledDay"], utc=True)
    appt = pd.to_datetime(raw["AppointmentDay"], utc=True)
    appt_day = appt.dt.normalize()
    wait = ((appt_day - sched.dt.normalize()).dt.days).clip(lower=0).astype(np.int64)
    noshow = raw["No-show"].eq("Yes")
    hist = history_counts(raw["PatientId"].astype(str), appt_day, noshow)

    age = raw["Age"].astype(np.int64)
    female = raw["Gender"].eq("F")
    weekday = appt.dt.weekday.to_numpy()
    hour = sched.dt.hour.to_numpy()
    flags = {c: raw[c].astype(np.int64) for c in OPTIONAL_FLAGS}
    unknown = {c: (np.zeros(len(raw), dtype=bool) if unrecorded is None or c not in unrecorded
                   else unrecorded[c].to_numpy(dtype=bool)) for c in (*OPTIONAL_FLAGS, HOUR)}
    neighbourhood = raw["Neighbourhood"].astype(str).str.title()

    adult = age >= 18
    who = pd.Series(np.where(adult, np.where(female, "woman", "man"), np.where(female, "girl", "boy")),
                    index=raw.index)
    pronoun = pd.Series(np.where(female, "She", "He"), index=raw.index)
    article = np.where((age == 8) | (age == 11) | (age == 18) | ((age >= 80) & (age < 90)), "An ", "A ")
    age_txt = pd.Series(np.where(age == 0, "A baby (under 1 year)",
                                 article + age.astype(str) + "-year-old " + who), index=raw.index)
    when = np.where(wait == 0, "booked the same day",
                    "booked " + wait.astype(str) + " " + _plural(wait, "day", "days") + " ahead")

    conditions = []
    for col, name in [("Hipertension", "hypertension"), ("Diabetes", "diabetes"),
                      ("Alcoholism", "alcoholism")]:
        conditions.append(np.where(flags[col] == 1, name, ""))
    cond = _join_nonempty(conditions)
    cond_txt = np.where(cond == "", "no hypertension, diabetes or alcoholism", cond)
    cond_txt = _conditions_unrecorded(cond_txt, flags, unknown, "full")
    handicap = np.where(flags["Handcap"] > 0,
                        "; disability level " + flags["Handcap"].astype(str), "")
    handicap = np.where(unknown["Handcap"], "; disability level not recorded", handicap)
    scholarship = np.where(flags["Scholarship"] == 1, "receives", "does not receive")
    welfare = pronoun + " " + scholarship + " Bolsa Familia welfare."
    welfare = welfare.where(~unknown["Scholarship"], "Bolsa Familia welfare not recorded.")
    sms = np.where(flags["SMS_received"] == 1, "An SMS reminder was sent.", "No SMS reminder was sent.")
    sms = np.where(unknown["SMS_received"], "SMS reminder not recorded.", sms)
    n_prior, n_missed = hist["prior_appointments"], hist["prior_noshows"]
    history_txt = np.where(
        n_prior == 0, "No earlier appointments on record.",
        "Earlier appointments on record: " + n_prior.astype(str) + ", of which "
        + n_missed.astype(str) + " missed.")

    if not history:
        history_txt = np.full(len(raw), "", dtype=object)
    if style == "compact":
        statement = compact_statements(age, female, neighbourhood, weekday, wait, hour, flags,
                                       hist if history else None, unknown)
    else:
        statement = (
            age_txt + " from " + neighbourhood + ", appointment on a " + WEEKDAYS[weekday] + ", "
            + when + _at_hour(hour, unknown[HOUR], " (scheduled at ", "h). ",
                              " (booking time not recorded). ")
            + "Conditions: " + cond_txt + handicap + ". " + welfare + " " + sms + " "
            + history_txt
        ).str.strip()
    out = pd.DataFrame({
        "id": raw["AppointmentID"].astype(str).to_numpy(),
        "group": raw["PatientId"].astype(str).to_numpy(),
        "statement": statement.to_numpy(),
        "label": np.where(noshow, "Yes", "No"),
        "f_age": age.to_numpy(), "f_female": female.astype(np.int64).to_numpy(),
        **{f"f_{c.lower()}": _known(flags[c], unknown[c]) for c in OPTIONAL_FLAGS},
        "f_wait_days": wait.to_numpy(), "f_weekday": weekday,
        "f_scheduled_hour": _known(pd.Series(hour), unknown[HOUR]),
        "f_prior_appointments": n_prior.to_numpy(), "f_prior_noshows": n_missed.to_numpy(),
        "f_neighbourhood": pd.Categorical(raw["Neighbourhood"].astype(str).to_numpy()),
    })
    if not history:
        out = out.drop(columns=["f_prior_appointments", "f_prior_noshows"])
    return out


def compact_statements(age: pd.Series, female: pd.Series, neighbourhood: pd.Series,
                       weekday: np.ndarray, wait: pd.Series, hour: np.ndarray,
                       flags: dict[str, pd.Series], hist: pd.DataFrame | None,
                       unknown: dict[str, np.ndarray] | None = None) -> pd.Series:
    """The facts of the full statement in fewer tokens (vectorized), e.g.
    ``F 45y, Jardim Camburi, Mon, booked 7d ahead at 10h, no hypertension/diabetes/alcoholism,
    no welfare, SMS, 2 earlier appts 1 missed``.

    Every fact of the full text is kept: sex and age (woman/girl follows from them), place,
    weekday, waiting days and booking hour, each condition, the disability level, welfare,
    the SMS reminder and (``hist`` given) the earlier appointments and no-shows. Words, not
    codes: a 135M model has seen "hypertension", not "HTN".
    """
    idx = age.index
    sex = pd.Series(np.where(female, "F ", "M "), index=idx)
    age_txt = sex + np.where(age == 0, "<1y", age.astype(str) + "y")
    wait_txt = np.where(wait == 0, "booked same day", "booked " + wait.astype(str) + "d ahead")
    names = [("Hipertension", "hypertension"), ("Diabetes", "diabetes"), ("Alcoholism", "alcoholism")]
    cond = pd.Series(_join_nonempty([np.where(flags[c] == 1, n, "") for c, n in names]),
                     index=idx).str.replace(", ", "+", regex=False)
    cond = cond.where(cond != "", "no hypertension/diabetes/alcoholism")
    unknown = unknown or {c: np.zeros(len(idx), dtype=bool) for c in (*OPTIONAL_FLAGS, HOUR)}
    cond = pd.Series(_conditions_unrecorded(cond.to_numpy(dtype=object), flags, unknown,
                                            "compact"), index=idx)
    disability = np.where(flags["Handcap"] > 0, ", disability " + flags["Handcap"].astype(str), "")
    disability = np.where(unknown["Handcap"], ", disability not recorded", disability)
    welfare = np.where(flags["Scholarship"] == 1, "welfare", "no welfare")
    sms = np.where(flags["SMS_received"] == 1, "SMS", "no SMS")
    out = (age_txt + ", " + neighbourhood + ", " + pd.Series(WEEKDAYS[weekday], index=idx).str[:3]
           + ", " + wait_txt
           + pd.Series(_at_hour(hour, unknown[HOUR], " at ", "h, ", ", time not recorded, "),
                       index=idx) + cond
           + disability + ", "
           + np.where(unknown["Scholarship"], "welfare not recorded", welfare)
           + ", " + np.where(unknown["SMS_received"], "SMS not recorded", sms))
    if hist is not None:
        n, k = hist["prior_appointments"], hist["prior_noshows"]
        out = out + np.where(n == 0, ", no earlier appts",
                             ", " + n.astype(str) + _plural(n, " earlier appt ", " earlier appts ")
                             + k.astype(str) + " missed")
    return out


def _at_hour(hour: np.ndarray, unknown: np.ndarray, before: str, after: str,
             unrecorded: str) -> np.ndarray:
    """``before + hour + after``, or ``unrecorded`` where the booking time was not given."""
    text = np.char.add(np.char.add(before, np.asarray(hour).astype(str)), after)
    return np.where(unknown, unrecorded, text).astype(object)


_CONDITIONS = (("Hipertension", "hypertension"), ("Diabetes", "diabetes"),
               ("Alcoholism", "alcoholism"))


def _known(values: pd.Series, unknown: np.ndarray) -> np.ndarray:
    """A flag's feature: the integers as before, float with NaN where it was not recorded."""
    return values.to_numpy() if not unknown.any() else values.to_numpy(float) * np.where(
        unknown, np.nan, 1.0)


def _conditions_unrecorded(cond_txt: np.ndarray, flags: dict[str, pd.Series],
                           unknown: dict[str, np.ndarray], style: str) -> np.ndarray:
    """The conditions text of rows where a condition was not recorded: the ones present, then
    ``no X`` for the ones recorded absent, then ``X not recorded``, separated by ``; `` (e.g.
    "hypertension; no diabetes; alcoholism not recorded"); other rows: unchanged.

    A loop over those rows only: they come from a form, a few at a time.
    """
    out = np.asarray(cond_txt, dtype=object).copy()
    rows = np.flatnonzero(np.any([unknown[c] for c, _ in _CONDITIONS], axis=0))
    sep = "+" if style == "compact" else ", "
    for i in rows:
        yes = [n for c, n in _CONDITIONS if not unknown[c][i] and flags[c].iloc[i] == 1]
        no = [n for c, n in _CONDITIONS if not unknown[c][i] and flags[c].iloc[i] != 1]
        unk = [n for c, n in _CONDITIONS if unknown[c][i]]
        parts = ([sep.join(yes)] if yes else []) + (["no " + " or ".join(no)] if no else [])
        parts.append((", ".join(unk[:-1]) + " and " if len(unk) > 1 else "") + unk[-1]
                     + " not recorded")
        out[i] = "; ".join(parts)
    return out


def _join_nonempty(parts: list[np.ndarray]) -> np.ndarray:
    """Join string arrays element-wise with ', ', skipping empty strings (vectorized)."""
    out = np.asarray(parts[0], dtype=object)
    for p in parts[1:]:
        p = np.asarray(p, dtype=object)
        sep = np.where((out != "") & (p != ""), ", ", "")
        out = out + sep + p
    return out
