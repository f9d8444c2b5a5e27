"""Synthetic no-show appointments with the exact Kaggle schema (:func:`generate_synthetic`).

The distributions below were measured on the real file (110,527 rows), so the pipeline runs
offline on data that looks like the real thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinlm.noshow.schema import iso_utc

#: Neighbourhoods of Vitória with their appointment counts in the real file (>= 100 rows).
_NEIGHBOURHOODS: tuple[tuple[str, int], ...] = (
    ("JARDIM CAMBURI", 7717), ("MARIA ORTIZ", 5805), ("RESISTÊNCIA", 4431),
    ("JARDIM DA PENHA", 3877), ("ITARARÉ", 3514), ("CENTRO", 3334), ("TABUAZEIRO", 3132),
    ("SANTA MARTHA", 3131), ("JESUS DE NAZARETH", 2853), ("BONFIM", 2773),
    ("SANTO ANTÔNIO", 2746), ("SANTO ANDRÉ", 2571), ("CARATOÍRA", 2565), ("JABOUR", 2509),
    ("SÃO PEDRO", 2448), ("ILHA DO PRÍNCIPE", 2266), ("NOVA PALESTINA", 2264),
    ("ANDORINHAS", 2262), ("DA PENHA", 2217), ("ROMÃO", 2215), ("GURIGICA", 2018),
    ("SÃO JOSÉ", 1977), ("BELA VISTA", 1907), ("MARUÍPE", 1902), ("FORTE SÃO JOÃO", 1889),
    ("ILHA DE SANTA MARIA", 1885), ("SÃO CRISTÓVÃO", 1836), ("REDENÇÃO", 1553),
    ("SÃO BENEDITO", 1439), ("JOANA D\u00b4ARC", 1427), ("CRUZAMENTO", 1398),
    ("CONSOLAÇÃO", 1376), ("SANTA TEREZA", 1332), ("PRAIA DO SUÁ", 1288),
    ("SANTOS DUMONT", 1276), ("GRANDE VITÓRIA", 1071), ("ILHA DAS CAIEIRAS", 1071),
    ("INHANGUETÁ", 1057), ("PRAIA DO CANTO", 1035), ("BENTO FERREIRA", 858),
    ("VILA RUBIM", 851), ("CONQUISTA", 849), ("DO QUADRO", 849), ("REPÚBLICA", 835),
    ("MONTE BELO", 824), ("PARQUE MOSCOSO", 802), ("GOIABEIRAS", 700), ("JUCUTUQUARA", 694),
    ("FONTE GRANDE", 682), ("MATA DA PRAIA", 644), ("DO CABRAL", 560), ("SANTOS REIS", 547),
    ("ESTRELINHA", 538), ("SANTA CLARA", 506), ("SOLON BORGES", 469), ("PIEDADE", 452),
    ("SANTA CECÍLIA", 448), ("SANTA LÚCIA", 438), ("SANTA LUÍZA", 428),
    ("BARRO VERMELHO", 423), ("DO MOSCOSO", 413), ("MÁRIO CYPRESTE", 371), ("BOA VISTA", 312),
    ("COMDUSA", 310), ("DE LOURDES", 305), ("ARIOVALDO FAVALESSA", 282),
    ("ANTÔNIO HONÓRIO", 271), ("FRADINHOS", 258), ("ENSEADA DO SUÁ", 235),
    ("SANTA HELENA", 178), ("HORTO", 175), ("UNIVERSITÁRIO", 152), ("SEGURANÇA DO LAR", 145),
    ("NAZARETH", 135),
)
#: Appointments per patient: 1..15 as counted in the real file; 16..30 share the rest.
_APPTS_PER_PATIENT = np.arange(1, 31)
_APPTS_PER_PATIENT_W = np.array(
    [37920, 13895, 5500, 2367, 1119, 553, 306, 202, 104, 85, 63, 36, 35, 22, 15]
    + [8] * 15, dtype=float)
#: Age bins [lo, hi) with their row counts in the real file (age 0 = babies).
_AGE_EDGES = np.array([0, 1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80,
                       85, 90, 95, 100, 103])
_AGE_W = np.array([3539, 6703, 7233, 5782, 7154, 6856, 6843, 7515, 7656, 6851, 7358, 8107,
                   7756, 6771, 5105, 3361, 2573, 1928, 1018, 347, 59, 6], dtype=float)
#: Digits of a PatientId (per distinct patient in the real file).
_PID_DIGITS = np.arange(7, 16)
_PID_DIGITS_W = np.array([1, 13, 79, 517, 2245, 7214, 16006, 22092, 14132], dtype=float)
#: Hour of day at which appointments were scheduled, 6..21.
_SCHED_HOURS = np.arange(6, 22)
_SCHED_HOURS_W = np.array([1578, 19213, 15349, 12823, 11056, 8462, 5422, 9036, 9127, 8079,
                           5542, 2909, 1340, 488, 100, 3], dtype=float)
#: Waiting days when not same-day: bins [lo, hi] and their row counts in the real file.
_WAIT_LO = np.array([1, 2, 4, 8, 15, 31, 61])
_WAIT_HI = np.array([1, 3, 7, 14, 30, 60, 120])
_WAIT_W = np.array([5213, 9462, 17510, 12025, 17371, 8283, 2095], dtype=float)
_SAME_DAY_SHARE = 0.349
#: The real file's appointment days: weekdays 2016-04-29..2016-06-08 without 23, 26, 27 May.
_APPOINTMENT_DAYS = np.array(
    [d for d in pd.bdate_range("2016-04-29", "2016-06-08").strftime("%Y-%m-%d")
     if d not in ("2016-05-23", "2016-05-26", "2016-05-27")], dtype="datetime64[D]")
_NO_SHOW_RATE = 0.202  # 22,319 / 110,527 in the real file


def generate_synthetic(n_rows: int, seed: int) -> pd.DataFrame:
    """Generate ``n_rows`` synthetic appointments with the exact Kaggle schema and formats.

    Every column is a string formatted as in the real CSV (``PatientId`` an integer id,
    ``ScheduledDay`` ``2016-04-29T18:38:08Z``, ``AppointmentDay`` at midnight, flags ``0``/``1``,
    ``Handcap`` ``0``-``4``, ``No-show`` ``Yes``/``No``). Distributions follow the real file:
    ages, sex by age, comorbidities by age, neighbourhood shares, appointments on weekdays
    between 2016-04-29 and 2016-06-08, about 35 % booked the same day and a long tail of
    waits (a few percent of bookings therefore fall before April), SMS reminders almost only
    for waits of 3 days or more, and repeat patients (about 1.8 appointments per patient).

    About 20 % no-shows, drawn from a logistic model: same-day bookings rarely miss, longer
    waits miss more, teenagers and young adults more than the elderly, a scholarship
    (Bolsa Família) slightly more, an SMS reminder slightly less, plus a latent propensity
    per patient (so a patient's earlier no-shows predict the later ones) and a small effect
    per neighbourhood. The intercept is calibrated so the expected rate is 20.2 %.

    Deterministic for a given ``(n_rows, seed)``; randomness only from
    ``np.random.default_rng(seed)``. No quirks: no negative ages, never scheduled after the
    appointment day, so :func:`clinlm.noshow.schema.validate` keeps every row.
    """
    if int(n_rows) < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows!r}")
    n_rows = int(n_rows)
    rng = np.random.default_rng(seed)

    # Patients and how many appointments each has.
    p_counts = _APPTS_PER_PATIENT_W / _APPTS_PER_PATIENT_W.sum()
    batch = n_rows // 1.6 + 16
    counts = rng.choice(_APPTS_PER_PATIENT, size=int(batch), p=p_counts)
    while counts.sum() < n_rows:
        counts = np.concatenate([counts, rng.choice(_APPTS_PER_PATIENT, size=int(batch),
                                                    p=p_counts)])
    n_pat = int(np.searchsorted(np.cumsum(counts), n_rows)) + 1
    counts = counts[:n_pat]
    counts[-1] -= counts.sum() - n_rows

    age_bin = rng.choice(len(_AGE_W), size=n_pat, p=_AGE_W / _AGE_W.sum())
    age = rng.integers(_AGE_EDGES[age_bin], _AGE_EDGES[age_bin + 1])
    female = rng.random(n_pat) < np.interp(age, [0, 12, 13, 18, 19, 40, 60, 115],
                                           [0.48, 0.48, 0.60, 0.65, 0.72, 0.70, 0.67, 0.67])
    hyp = rng.random(n_pat) < np.interp(age, [0, 18, 30, 40, 50, 60, 70, 80, 115],
                                        [0.0, 0.005, 0.03, 0.10, 0.25, 0.42, 0.55, 0.62, 0.62])
    p_diab = np.where(hyp, 0.30, np.interp(age, [0, 18, 40, 60, 115],
                                           [0.002, 0.005, 0.015, 0.035, 0.04]))
    diab = rng.random(n_pat) < p_diab
    p_alc = np.interp(age, [0, 15, 18, 30, 45, 60, 80, 115],
                      [0.0, 0.0, 0.005, 0.02, 0.06, 0.05, 0.02, 0.01])
    alc = rng.random(n_pat) < p_alc * np.where(female, 0.6, 1.7)
    scholarship = rng.random(n_pat) < np.interp(age, [0, 18, 30, 40, 60, 115],
                                                [0.11, 0.13, 0.15, 0.12, 0.05, 0.02])
    handcap_any = rng.random(n_pat) < np.interp(age, [0, 18, 40, 60, 90, 115],
                                                [0.009, 0.012, 0.018, 0.035, 0.05, 0.05])
    handcap = np.where(handcap_any, rng.choice([1, 2, 3, 4], size=n_pat,
                                               p=[0.905, 0.085, 0.008, 0.002]), 0)
    hood_w = np.array([c for _, c in _NEIGHBOURHOODS], dtype=float)
    hood = rng.choice(len(hood_w), size=n_pat, p=hood_w / hood_w.sum())
    hood_effect = rng.normal(0.0, 0.15, size=len(hood_w))
    propensity = rng.normal(0.0, 1.2, size=n_pat)
    digits = rng.choice(_PID_DIGITS, size=n_pat, p=_PID_DIGITS_W / _PID_DIGITS_W.sum())
    patient_id = _unique_ids(rng, 10 ** (digits - 1), 10 ** digits)

    # Appointments.
    pat = np.repeat(np.arange(n_pat), counts)
    appt_day = rng.choice(_APPOINTMENT_DAYS, size=n_rows)
    wait_bin = rng.choice(len(_WAIT_W), size=n_rows, p=_WAIT_W / _WAIT_W.sum())
    wait = np.where(rng.random(n_rows) < _SAME_DAY_SHARE, 0,
                    rng.integers(_WAIT_LO[wait_bin], _WAIT_HI[wait_bin] + 1))
    weekday = ((appt_day - wait.astype("timedelta64[D]")).astype(np.int64) + 3) % 7  # Mon=0
    wait = wait + np.select([weekday == 5, weekday == 6], [1, 2], 0)  # book on weekdays
    sched_day = appt_day - wait.astype("timedelta64[D]")
    seconds = (rng.choice(_SCHED_HOURS, size=n_rows, p=_SCHED_HOURS_W / _SCHED_HOURS_W.sum())
               * 3600 + rng.integers(0, 3600, size=n_rows))
    sched = sched_day.astype("datetime64[s]") + seconds.astype("timedelta64[s]")
    p_sms = np.select([wait <= 1, wait == 2, wait == 3], [0.0, 0.03, 0.2], 0.6)
    sms = rng.random(n_rows) < p_sms

    # No-show: logistic model, intercept calibrated to the real rate.
    age_r = age[pat]
    logit = (
        np.where(wait == 0, -2.0, 0.32 * np.log1p(wait))
        + np.interp(age_r, [0, 5, 10, 18, 25, 35, 45, 55, 65, 75, 90, 115],
                    [-0.15, -0.05, 0.1, 0.35, 0.3, 0.1, 0.0, -0.2, -0.4, -0.42, -0.35, -0.35])
        + 0.2 * scholarship[pat] - 0.3 * sms - 0.05 * hyp[pat] - 0.05 * diab[pat]
        + propensity[pat] + hood_effect[hood[pat]]
    )
    logit = logit + _calibrate_intercept(logit, _NO_SHOW_RATE)
    no_show = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))

    # Appointment ids grow with the booking time, as in the real file.
    appointment_id = np.empty(n_rows, dtype=np.int64)
    appointment_id[np.argsort(sched, kind="stable")] = (
        5_030_000 + np.cumsum(rng.integers(1, 8, size=n_rows)))

    order = rng.permutation(n_rows)
    pat, sched, appt_day = pat[order], sched[order], appt_day[order]
    sms, no_show, appointment_id = sms[order], no_show[order], appointment_id[order]
    hood_names = np.array([name for name, _ in _NEIGHBOURHOODS], dtype=object)
    columns = {
        "PatientId": patient_id[pat].astype(str),
        "AppointmentID": appointment_id.astype(str),
        "Gender": np.where(female[pat], "F", "M"),
        "ScheduledDay": iso_utc(sched),
        "AppointmentDay": iso_utc(appt_day.astype("datetime64[s]")),
        "Age": age[pat].astype(str),
        "Neighbourhood": hood_names[hood[pat]],
        "Scholarship": scholarship[pat].astype(np.int64).astype(str),
        "Hipertension": hyp[pat].astype(np.int64).astype(str),
        "Diabetes": diab[pat].astype(np.int64).astype(str),
        "Alcoholism": alc[pat].astype(np.int64).astype(str),
        "Handcap": handcap[pat].astype(str),
        "SMS_received": sms.astype(np.int64).astype(str),
        "No-show": np.where(no_show, "Yes", "No"),
    }
    return pd.DataFrame({c: np.asarray(v).astype(object) for c, v in columns.items()})


def _unique_ids(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Draw one integer in ``[low[i], high[i])`` per element, redrawing until all are unique."""
    ids = rng.integers(low, high)
    while True:
        _, first = np.unique(ids, return_index=True)
        dup = np.ones(ids.size, dtype=bool)
        dup[first] = False
        if not dup.any():
            return ids
        ids[dup] = rng.integers(low[dup], high[dup])


def _calibrate_intercept(logit: np.ndarray, target: float) -> float:
    """Bisection for the shift ``b`` with ``mean(sigmoid(logit + b)) == target``."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) > target:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)
