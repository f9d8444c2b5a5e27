"""Framingham 2008 general cardiovascular risk model and vascular ("heart") age.

D'Agostino RB Sr, Vasan RS, Pencina MJ, et al. General cardiovascular risk profile for use
in primary care: the Framingham Heart Study. Circulation 2008;117:743-753 (Table 2).

The 10-year risk of a first CVD event is ``1 - S0 ** exp(sum(beta * x) - mean)`` with
``x`` = ln(age), ln(total cholesterol), ln(HDL), ln(SBP) (treated or untreated coefficient),
smoker (0/1) and diabetes (0/1). Cholesterol is in mg/dL, SBP in mmHg.

Vascular age is the age at which a person of the same sex with *normal* risk factors
(untreated SBP 125 mmHg, total cholesterol 180 mg/dL, HDL 45 mg/dL, non-smoker,
non-diabetic) has the same 10-year risk. Because risk is monotone in the linear predictor,
this has the closed form::

    ln(vascular_age) = (sum(beta * x) - [b_chol ln 180 + b_hdl ln 45 + b_sbp_untreated ln 125])
                       / b_age

(no clipping here: at extreme risk factors it can fall far outside 30-74, the age range
the model was fitted on).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

COEF: dict[str, dict[str, float]] = {
    "male": {"age": 3.06117, "chol": 1.12370, "hdl": -0.93263, "sbp_untreated": 1.93303,
             "sbp_treated": 1.99881, "smoker": 0.65451, "diabetes": 0.57367,
             "s0": 0.88936, "mean": 23.9802},
    "female": {"age": 2.32888, "chol": 1.20904, "hdl": -0.70833, "sbp_untreated": 2.76157,
               "sbp_treated": 2.82263, "smoker": 0.52873, "diabetes": 0.69154,
               "s0": 0.95012, "mean": 26.1931},
}
"""Table 2 of D'Agostino 2008: sex -> coefficient name -> value (``s0``: 10-year baseline
survival; ``mean``: the mean of the linear predictor in the derivation cohort)."""

NORMAL = {"sbp": 125.0, "chol": 180.0, "hdl": 45.0}
"""The 'normal' risk-factor profile that defines vascular age (untreated, non-smoker,
non-diabetic)."""


def _is_male(sex: ArrayLike) -> np.ndarray:
    """Boolean array from sex given as 'M'/'F', 'male'/'female', or 1 = male / 0 = female."""
    s = np.asarray(sex)
    if s.dtype.kind in "biuf":
        return s.astype(float) == 1
    low = np.char.lower(s.astype(str))
    ok = np.isin(low, ["m", "male", "f", "female", "man", "woman"])
    if not ok.all():
        bad = np.unique(s[~ok])[:5]
        raise ValueError(f"sex must be M/F, male/female or 1/0 (1 = male); got {bad.tolist()}")
    return np.isin(low, ["m", "male", "man"])


def _coef(male: np.ndarray, name: str) -> np.ndarray:
    return np.where(male, COEF["male"][name], COEF["female"][name])


def linear_predictor(age: ArrayLike, sex: ArrayLike, total_chol: ArrayLike, hdl: ArrayLike,
                     sbp: ArrayLike, bp_treated: ArrayLike, smoker: ArrayLike,
                     diabetes: ArrayLike) -> np.ndarray:
    """``sum(beta * x)`` of the Framingham 2008 model (before subtracting the mean).

    Args:
        age: years (> 0).
        sex: ``"M"``/``"F"`` (or ``"male"``/``"female"``, or 1 = male / 0 = female).
        total_chol, hdl: mg/dL (> 0).
        sbp: systolic blood pressure, mmHg (> 0).
        bp_treated, smoker, diabetes: booleans or 0/1.
    All arguments broadcast against each other (scalars or arrays).
    """
    male = _is_male(sex)
    age, total_chol, hdl, sbp = (np.asarray(v, dtype=float) for v in (age, total_chol, hdl, sbp))
    treated = np.asarray(bp_treated).astype(bool)
    b_sbp = np.where(treated, _coef(male, "sbp_treated"), _coef(male, "sbp_untreated"))
    return (_coef(male, "age") * np.log(age) + _coef(male, "chol") * np.log(total_chol)
            + _coef(male, "hdl") * np.log(hdl) + b_sbp * np.log(sbp)
            + _coef(male, "smoker") * np.asarray(smoker, dtype=float)
            + _coef(male, "diabetes") * np.asarray(diabetes, dtype=float))


def risk_10y(age: ArrayLike, sex: ArrayLike, total_chol: ArrayLike, hdl: ArrayLike,
             sbp: ArrayLike, bp_treated: ArrayLike, smoker: ArrayLike,
             diabetes: ArrayLike) -> np.ndarray:
    """10-year risk (0-1) of a first cardiovascular event (arguments: :func:`linear_predictor`)."""
    male = _is_male(sex)
    lp = linear_predictor(age, sex, total_chol, hdl, sbp, bp_treated, smoker, diabetes)
    return 1.0 - _coef(male, "s0") ** np.exp(lp - _coef(male, "mean"))


def vascular_age(age: ArrayLike, sex: ArrayLike, total_chol: ArrayLike, hdl: ArrayLike,
                 sbp: ArrayLike, bp_treated: ArrayLike, smoker: ArrayLike,
                 diabetes: ArrayLike) -> np.ndarray:
    """Vascular age in years (arguments: :func:`linear_predictor`; closed form above).

    Equals ``age`` exactly for a person with the normal profile (SBP 125 untreated, total
    cholesterol 180, HDL 45, non-smoker, non-diabetic).
    """
    male = _is_male(sex)
    lp = linear_predictor(age, sex, total_chol, hdl, sbp, bp_treated, smoker, diabetes)
    ref = (_coef(male, "chol") * np.log(NORMAL["chol"]) + _coef(male, "hdl") * np.log(NORMAL["hdl"])
           + _coef(male, "sbp_untreated") * np.log(NORMAL["sbp"]))
    return np.exp((lp - ref) / _coef(male, "age"))
