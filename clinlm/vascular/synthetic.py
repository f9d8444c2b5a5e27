"""The offline default cohort: demographics, risk factors, simulated 12-lead ECGs, vascular age.

:func:`generate_cohort` draws ``n`` subjects with plausible, correlated risk factors, a set
of *latent* ("true") ECG parameters, simulates a 10 s, 12-lead, 100 Hz recording for each
(a fast sum-of-Gaussians dipole model, :func:`simulate_ecg`), extracts ECG features from
those recordings with the same :func:`clinlm.vascular.ecg.extract_features` used for real
records, and defines the target::

    vascular_age = clip(framingham_vascular_age + ecg_shift + N(0, noise_sd), 18, 110)

``ecg_shift`` is a sum of documented "cardiac ageing" terms (:data:`ECG_AGEING`) computed
from the *latent* ECG parameters, so the ECG carries information about the target beyond
chronological age and the risk factors. A model that saw the latent parameters exactly
would still have an MAE of about ``noise_sd * sqrt(2/pi)`` (:func:`noise_floor_mae`); models
see the *extracted* features (measurement error on top), so their floor is a little higher.

The stored values are quantized, so the same seed gives the same bytes on every CPU: numpy's
SIMD-dispatched ``exp``/``log``/``arctan2`` (AVX512 vs AVX2 paths) and OpenBLAS's
CPU-specific kernels differ in the last bit, and without quantization the cohort's hash
changed between two CPUs (the statements built from it did not). The signals are rounded
to 1 µV (:data:`SIGNAL_QUANTUM_MV`; a real ECG is stored as integer µV or coarser) before
the features are extracted from them, and every float column of the table to
:data:`TABLE_DECIMALS` decimals (far below any clinical resolution).

Latent columns are prefixed ``true_`` and are for validating the extractor only; never
give them to a model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from clinlm.vascular import framingham
from clinlm.vascular.ecg import add_features

FS = 100.0
DURATION_S = 10.0
SIGNAL_QUANTUM_MV = 0.001
"""Signals are stored as whole multiples of this (1 µV): the same bytes on every CPU."""
TABLE_DECIMALS = 6
"""Float columns of the cohort table are rounded to this many decimals (same reason)."""

ECG_AGEING: dict[str, dict[str, float | str]] = {
    "sdnn": {"coef": -8.0, "ref": 40.0,
             "doc": "-8.0 years x ln(SDNN / 40 ms): lower heart-rate variability -> older "
                    "(halving SDNN adds 5.5 years)"},
    "qtc": {"coef": 0.10, "ref": 410.0,
            "doc": "+0.10 years per ms of QTc (Bazett) above 410 ms (and minus below): "
                   "longer repolarisation -> older (+30 ms adds 3 years)"},
    "qrs_axis": {"coef": 0.08, "ref": 30.0,
                 "doc": "+0.08 years per degree the QRS axis lies left of +30 deg "
                        "(0 otherwise): leftward axis / left axis deviation -> older "
                        "(axis -30 deg adds 4.8 years)"},
    "hr": {"coef": 0.10, "ref": 70.0,
           "doc": "+0.10 years per bpm of resting heart rate above 70 (and minus below)"},
    "qrs": {"coef": 0.15, "ref": 100.0,
            "doc": "+0.15 years per ms of QRS duration above 100 ms (0 otherwise): "
                   "conduction disease -> older (a 140 ms bundle-branch block adds 6 years)"},
}
"""Cardiac-ageing terms added to the Framingham vascular age (years), from latent values."""

LATENT = ("true_hr_bpm", "true_pr_ms", "true_qrs_ms", "true_qt_ms", "true_qtc_ms",
          "true_p_axis_deg", "true_qrs_axis_deg", "true_t_axis_deg", "true_sdnn_ms",
          "true_rmssd_ms")

# Lead vectors (x = patient's left, y = inferior, z = anterior). Limb leads follow
# Einthoven/Goldberger exactly (III = II - I, aVR = -(I+II)/2, aVL = I - II/2,
# aVF = II - I/2); precordial leads are unit vectors in the horizontal plane at the listed
# angles (from the left towards anterior), scaled by 1.5 (chest leads read larger).
_LEAD_I = np.array([1.0, 0.0, 0.0])
_LEAD_II = np.array([0.5, math.sqrt(3) / 2, 0.0])
_PRECORDIAL_DEG = (115.0, 95.0, 75.0, 55.0, 30.0, 5.0)  # V1..V6
LEAD_MATRIX = np.column_stack(
    [_LEAD_I, _LEAD_II, _LEAD_II - _LEAD_I, -(_LEAD_I + _LEAD_II) / 2, _LEAD_I - _LEAD_II / 2,
     _LEAD_II - _LEAD_I / 2]
    + [1.5 * np.array([math.cos(math.radians(a)), 0.15, math.sin(math.radians(a))])
       for a in _PRECORDIAL_DEG])
"""``(3, 12)``: dipole ``(x, y, z)`` -> leads I, II, III, aVR, aVL, aVF, V1-V6."""


def noise_floor_mae(noise_sd: float) -> float:
    """Expected MAE of a perfect predictor when the target carries N(0, noise_sd) noise."""
    return float(noise_sd) * math.sqrt(2.0 / math.pi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit_dir(theta_deg: np.ndarray, z: float | np.ndarray) -> np.ndarray:
    """``(n, 3)`` unit vectors with frontal angle ``theta`` and anterior component ``z``."""
    t = np.radians(theta_deg)
    v = np.stack([np.cos(t), np.sin(t), np.broadcast_to(z, t.shape)], axis=-1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _demographics(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Age, sex, body size and Framingham risk factors with plausible correlations."""
    age = rng.uniform(30.0, 80.0, n)
    male = rng.random(n) < 0.5
    height = np.where(male, rng.normal(177, 7, n), rng.normal(164, 6.5, n)) - 0.06 * (age - 50)
    bmi = np.clip(rng.normal(26.0 + 0.04 * (age - 50) + 0.5 * male, 4.0, n), 17.0, 45.0)
    weight = bmi * (height / 100.0) ** 2
    sbp = 112 + 0.5 * (age - 30) + 0.8 * (bmi - 25) + 4 * male + rng.normal(0, 12, n)
    treated = rng.random(n) < _sigmoid((sbp - 150) / 10 + (age - 60) / 15)
    sbp = np.clip(sbp - treated * rng.uniform(10, 25, n), 90, 210)
    chol = np.clip(182 + 0.4 * (age - 30) + 1.2 * (bmi - 25) - 6 * male
                   + rng.normal(0, 35, n), 110, 340)
    hdl = np.clip(np.where(male, 47.0, 58.0) - 0.8 * (bmi - 25) + rng.normal(0, 12, n), 20, 110)
    smoker = rng.random(n) < _sigmoid(-0.6 - 0.03 * (age - 30) + 0.3 * male)
    diabetes = rng.random(n) < _sigmoid(-4.2 + 0.045 * (age - 30) + 0.15 * (bmi - 25))
    return pd.DataFrame({
        "age": age, "sex": np.where(male, "M", "F"), "height_cm": height, "weight_kg": weight,
        "bmi": bmi, "sbp_mmhg": sbp, "bp_treated": treated, "total_chol_mgdl": chol,
        "hdl_mgdl": hdl, "smoker": smoker, "diabetes": diabetes,
    })


def _latent_ecg(d: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Latent ("true") ECG parameters, depending on age, sex, BMI, smoking and diabetes."""
    n = len(d)
    age, bmi = d["age"].to_numpy(), d["bmi"].to_numpy()
    male = (d["sex"] == "M").to_numpy()
    smoker, diab = d["smoker"].to_numpy(), d["diabetes"].to_numpy()
    hr = np.clip(rng.normal(68 + 3 * smoker + 0.4 * (bmi - 25) + 2 * diab - 2 * male, 10, n),
                 45, 120)
    sdnn = np.clip(np.exp(rng.normal(np.log(45) - 0.015 * (age - 50) - 0.15 * diab
                                     - 0.1 * smoker - 0.008 * (hr - 70), 0.35, n)), 8, 150)
    rmssd = np.clip(sdnn * np.exp(rng.normal(-0.1, 0.2, n)), 5, 180)
    pr = np.clip(rng.normal(152 + 0.5 * (age - 50) + 5 * male, 20, n), 100, 300)
    qrs = np.clip(rng.normal(88 + 5 * male + 0.1 * (age - 50) + 0.3 * (bmi - 25), 8, n), 65, 115)
    bbb = rng.random(n) < _sigmoid(-4.3 + 0.05 * (age - 50))
    qrs = np.where(bbb, rng.uniform(122, 160, n), qrs)
    qtc = np.clip(rng.normal(405 + 10 * ~male + 0.3 * (age - 50) + 8 * diab
                             + 0.25 * (qrs - 90), 18, n), 350, 520)
    qt = qtc * np.sqrt(60.0 / hr)
    qrs_axis = np.clip(rng.normal(58 - 0.7 * (age - 30) - 0.8 * (bmi - 25), 28, n), -85, 130)
    p_axis = np.clip(rng.normal(55, 15, n), -20, 100)
    t_axis = np.clip(rng.normal(0.4 * qrs_axis + 25, 18, n), -60, 120)
    return pd.DataFrame({
        "true_hr_bpm": hr, "true_pr_ms": pr, "true_qrs_ms": qrs, "true_qt_ms": qt,
        "true_qtc_ms": qtc, "true_p_axis_deg": p_axis, "true_qrs_axis_deg": qrs_axis,
        "true_t_axis_deg": t_axis, "true_sdnn_ms": sdnn, "true_rmssd_ms": rmssd,
    }, index=d.index)


def ecg_ageing_shift(latent: pd.DataFrame) -> pd.Series:
    """Years added to the Framingham vascular age from the latent ECG (see :data:`ECG_AGEING`)."""
    a = ECG_AGEING
    sdnn = a["sdnn"]["coef"] * np.log(latent["true_sdnn_ms"] / a["sdnn"]["ref"])
    qtc = a["qtc"]["coef"] * (latent["true_qtc_ms"] - a["qtc"]["ref"])
    axis = a["qrs_axis"]["coef"] * np.maximum(0.0, a["qrs_axis"]["ref"] - latent["true_qrs_axis_deg"])
    hr = a["hr"]["coef"] * (latent["true_hr_bpm"] - a["hr"]["ref"])
    qrs = a["qrs"]["coef"] * np.maximum(0.0, latent["true_qrs_ms"] - a["qrs"]["ref"])
    return (sdnn + qtc + axis + hr + qrs).rename("ecg_shift_years")


def simulate_ecg(latent: pd.DataFrame, seed: int, fs: float = FS, duration_s: float = DURATION_S,
                 r_amp_mv: np.ndarray | None = None, progress: bool = True) -> np.ndarray:
    """Simulate 12-lead ECGs ``(n, n_samples, 12)`` float32 (mV) from latent parameters.

    Model: per beat, a 3-D cardiac dipole is a sum of Gaussian waves -- P; septal Q
    (rightward-anterior); R (frontal QRS axis, posterior tilt); S (rightward-superior-
    posterior); T (asymmetric, slower up-stroke) -- projected on the 12 lead vectors of
    :data:`LEAD_MATRIX`. Timing per subject follows the latent PR, QRS, QT (QRS onset =
    beat time; the P wave reaches 20 % of its peak at onset - PR, the extractor's P-onset
    rule; Q starts and S ends ~2.5 SD from their centres, inside the latent QRS; the T
    wave's tangent-rule end is at onset + QT). RR intervals are an AR(1) series
    with the latent SDNN, its coefficient chosen to give the latent RMSSD
    (``RMSSD = SDNN * sqrt(2 (1 - phi))``), mean RR = 60 / HR. Added: white noise
    (0.012 mV), baseline wander (0.05-0.35 Hz, up to 0.1 mV) per lead.

    Args:
        latent: columns of :data:`LATENT`.
        seed: random seed (waveform noise, RR series, amplitudes).
        fs, duration_s: sampling rate (Hz) and length (s).
        r_amp_mv: optional R-wave dipole amplitude per subject (default N(1.1, 0.25)).
        progress: tqdm progress bar.
    """
    rng = np.random.default_rng(seed)
    n = len(latent)
    ns = round(duration_s * fs)
    t = np.arange(ns) / fs
    lat = {k: latent[k].to_numpy(dtype=float) for k in LATENT}
    if r_amp_mv is None:
        r_amp_mv = np.clip(rng.normal(1.1, 0.25, n), 0.4, 2.2)
    out = np.empty((n, ns, 12), dtype=np.float32)
    # per-subject wave directions (n, 3)
    d_p = _unit_dir(lat["true_p_axis_deg"], 0.1)
    d_r = _unit_dir(lat["true_qrs_axis_deg"], -0.45)
    d_t = _unit_dir(lat["true_t_axis_deg"], 0.35)
    d_q = np.broadcast_to(np.array([-0.55, 0.2, 0.8]) / np.linalg.norm([-0.55, 0.2, 0.8]), (n, 3))
    d_s = np.broadcast_to(np.array([-0.6, -0.45, -0.65]) / np.linalg.norm([-0.6, -0.45, -0.65]),
                          (n, 3))
    k20 = math.sqrt(2 * math.log(5))  # a Gaussian is at 20 % of its peak at 1.79 sigma
    for i in tqdm(range(n), desc="simulate ECG", unit="subj", disable=not progress):
        rr_mean = 60.0 / lat["true_hr_bpm"][i]
        sd = lat["true_sdnn_ms"][i] / 1000.0
        phi = float(np.clip(1 - 0.5 * (lat["true_rmssd_ms"][i] / lat["true_sdnn_ms"][i]) ** 2,
                            -0.9, 0.95))
        nb = int(np.ceil((duration_s + 3.0) / (rr_mean * 0.6))) + 2
        e = rng.normal(0.0, sd * math.sqrt(1 - phi ** 2), nb)
        dev = np.empty(nb)
        dev[0] = rng.normal(0.0, sd)
        for j in range(1, nb):
            dev[j] = phi * dev[j - 1] + e[j]
        rr = np.maximum(rr_mean + dev, 0.3)
        onsets = -1.5 + rng.uniform(0, rr_mean) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
        onsets = onsets[onsets < duration_s + 1.0]
        qrs, pr, qt = (lat["true_qrs_ms"][i] / 1000, lat["true_pr_ms"][i] / 1000,
                       lat["true_qt_ms"][i] / 1000)
        a_r = r_amp_mv[i]
        s_p = 0.022  # P wave sd (s): ~100 ms between the 5 % points
        s_tr = 0.040 + 0.05 * (qt - 0.40)  # T down-stroke sd
        s_tl = 1.6 * s_tr  # slower up-stroke
        # (centre offset from QRS onset (s), sd (s), amplitude (mV), direction)
        waves = [
            (-pr + k20 * s_p, s_p, 0.16, d_p[i]),
            (0.14 * qrs, 0.055 * qrs, 0.12 * a_r, d_q[i]),
            (0.45 * qrs, 0.115 * qrs, a_r, d_r[i]),
            (0.78 * qrs, 0.085 * qrs, 0.35 * a_r, d_s[i]),
            (qt - 2.0 * s_tr, s_tr, 0.28 + 0.15 * a_r, d_t[i]),
        ]
        centres = np.array([w[0] for w in waves])  # (n_waves,)
        sds = np.array([w[1] for w in waves])
        amps = np.array([w[2] for w in waves])
        dirs = np.stack([w[3] for w in waves])  # (n_waves, 3)
        c = (onsets[:, None] + centres[None, :]).ravel()  # (n_beats * n_waves,)
        dt = t[:, None] - c[None, :]  # (ns, n_beats * n_waves)
        sd_all = np.tile(sds, len(onsets))
        is_t = np.tile(np.arange(len(waves)) == 4, len(onsets))
        sd_all = np.where(is_t[None, :] & (dt < 0), s_tl, sd_all[None, :])
        g = np.exp(-0.5 * (dt / sd_all) ** 2) * np.tile(amps, len(onsets))[None, :]
        dipole = g @ np.tile(dirs, (len(onsets), 1))  # (ns, 3)
        sig = dipole @ LEAD_MATRIX
        f_bw = rng.uniform(0.05, 0.35, 12)
        sig += rng.uniform(0, 0.1, 12) * np.sin(2 * np.pi * f_bw * t[:, None]
                                                  + rng.uniform(0, 2 * np.pi, 12))
        sig += rng.normal(0, 0.012, sig.shape)
        out[i] = quantize(sig, SIGNAL_QUANTUM_MV)
    return out


def quantize(x: np.ndarray, quantum: float) -> np.ndarray:
    """``x`` rounded to whole multiples of ``quantum``.

    Why: only IEEE-exact operations (multiply, round-half-even, divide), so inputs that
    differ in the last bit (CPU-specific SIMD or BLAS paths) land on the same value unless
    they straddle a half-quantum, which a last-bit difference practically never does.
    """
    return np.round(np.asarray(x, dtype=np.float64) / quantum) * quantum


def round_table(table: pd.DataFrame, decimals: int = TABLE_DECIMALS) -> pd.DataFrame:
    """``table`` with every float column rounded to ``decimals`` (see the module doc)."""
    out = table.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(decimals)
    out.attrs = dict(table.attrs)
    return out


def generate_cohort(n: int = 1500, seed: int = 42, noise_sd: float = 4.0,
                    extract: bool = True, processes: int = 1, progress: bool = True
                    ) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Draw a synthetic cohort with simulated ECGs and a vascular-age target.

    Args:
        n: subjects.
        seed: random seed (same seed -> identical table and signals).
        noise_sd: SD (years) of the Gaussian noise added to the target; the MAE floor of a
            perfect model is :func:`noise_floor_mae` (``noise_sd * sqrt(2/pi)``).
        extract: extract ECG features from the simulated signals (the features used for
            learning); False leaves those columns out (faster, for tests of the simulator).
        processes: worker processes for the feature extraction.
        progress: tqdm progress bars.

    Returns:
        ``(table, signals, fs)``: ``signals`` is ``(n, 1000, 12)`` float32 in mV (100 Hz,
        10 s, leads I, II, III, aVR, aVL, aVF, V1-V6), whole µV; ``table`` has one row per
        subject, floats rounded to :data:`TABLE_DECIMALS` decimals:

        * ``id``, ``subject_id`` (str, ``syn-000001``...; one recording per subject);
        * demographics: ``age`` (years), ``sex`` (``M``/``F``), ``height_cm``,
          ``weight_kg``, ``bmi``;
        * risk factors: ``sbp_mmhg``, ``bp_treated``, ``total_chol_mgdl``, ``hdl_mgdl``,
          ``smoker``, ``diabetes`` (bools);
        * ``framingham_risk_10y``, ``vascular_age_framingham``, ``ecg_shift_years``
          (derivation; not model inputs);
        * ``vascular_age``: the target (years, 18-110);
        * latent ECG parameters ``true_*`` (:data:`LATENT`; validation only);
        * extracted features (:data:`clinlm.vascular.ecg.FEATURES`) when ``extract``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if noise_sd < 0:
        raise ValueError("noise_sd must be >= 0")
    rng = np.random.default_rng(seed)
    d = _demographics(n, rng)
    latent = _latent_ecg(d, rng)
    args = (d["age"], d["sex"], d["total_chol_mgdl"], d["hdl_mgdl"], d["sbp_mmhg"],
            d["bp_treated"], d["smoker"], d["diabetes"])
    d["framingham_risk_10y"] = framingham.risk_10y(*args)
    d["vascular_age_framingham"] = framingham.vascular_age(*args)
    d["ecg_shift_years"] = ecg_ageing_shift(latent)
    noise = rng.normal(0.0, noise_sd, n) if noise_sd > 0 else np.zeros(n)
    d["vascular_age"] = np.clip(d["vascular_age_framingham"] + d["ecg_shift_years"] + noise,
                                18.0, 110.0)
    ids = [f"syn-{i:06d}" for i in range(1, n + 1)]
    table = pd.concat([pd.DataFrame({"id": ids, "subject_id": ids}), d, latent], axis=1)
    signals = simulate_ecg(latent, seed=seed + 1, progress=progress)
    if extract:
        table = add_features(table, signals, FS, processes=processes, progress=progress)
    table = round_table(table)
    table.attrs["noise_sd"] = float(noise_sd)
    table.attrs["noise_floor_mae"] = noise_floor_mae(noise_sd)
    return table, signals, FS
