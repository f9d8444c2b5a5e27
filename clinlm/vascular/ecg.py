"""One 12-lead ECG feature extractor, used for real (PTB-XL, user) and simulated recordings.

Pipeline of :func:`extract_features` (``signal`` is ``(n_samples, 12)`` in mV, leads in the
standard order I, II, III, aVR, aVL, aVF, V1-V6):

1. **Rhythm** -- lead II (or, when its QRS is small, lead I or V5, see
   :func:`_rhythm_lead`) is cleaned with ``neurokit2.ecg_clean`` and R peaks are found
   with ``neurokit2.ecg_peaks``. Heart rate = 60 000 / median RR (ms). HRV uses only "normal"
   RR intervals (within 20 % of the median RR, so ectopic beats and missed/extra detections
   are dropped): SDNN = sample SD of those RR; RMSSD = root mean square of the successive
   differences between two *adjacent* normal RR intervals.
2. **Median beat** -- all leads are high-pass (0.5 Hz) / low-pass (40 Hz) filtered,
   resampled to 500 Hz, cut around every R peak (re-aligned on the 12-lead spatial
   magnitude) and averaged with a per-sample median; beats that correlate < 0.8 with the
   first median are dropped (ectopics) and the median is recomputed.
3. **Intervals** (global, from the median beat):

   * QRS onset/offset: the contiguous run around the QRS peak where the spatial velocity
     (Euclidean norm of the first derivatives of the 8 independent leads I, II, V1-V6)
     exceeds ``iso + 0.06 * (peak - iso)`` (``iso`` = 10th percentile of the velocity;
     dips shorter than 12 ms are bridged; the fraction rises to 0.10, then 0.15 when the
     run reaches the -140/+180 ms search window's edge, i.e. has merged with a P or T wave);
   * P wave: the most prominent peak 40-300 ms before QRS onset in lead II, I or aVF
     (prominence >= 0.04 mV), onset = where it comes within 20 % of its left base;
   * T end: tangent method on the root-mean-square curve of the baseline-corrected leads
     (tangent at the steepest down-slope after the T peak, crossed with the isoelectric
     level);
   * PR = QRS onset - P onset, QRS = offset - onset, QT = T end - QRS onset,
     QTc = QT / sqrt(RR in s) (Bazett).

4. **Axes** (frontal plane, hexaxial): ``axis = atan2(2/sqrt(3) * net(aVF), net(I))`` in
   degrees, in (-180, 180], where ``net`` is the net amplitude of the baseline-corrected
   median beat in the wave's window: max + min for QRS (onset to offset); the mean (net
   area / duration, more robust for low, monophasic waves) for P (P onset to 20 ms before
   QRS onset) and T (QRS offset + 40 ms to T end). NaN when both are below 0.01 mV.

Why not ``neurokit2.ecg_delineate`` for the intervals: on real PTB-XL records its ``dwt``
method gives non-physiological QRS and PR durations, and its ``prominence`` method bounds the
QRS by a 100 ms search window, so bundle-branch blocks read short; ``method="prominence"``
keeps that path available for comparison. The measurements of both and of the default
template method: docs/results.md, "Why the defaults are what they are".

Every feature is NaN where it cannot be derived (fewer than 3 R peaks, no P wave, flat
lead...). The extractor never raises on a bad recording; it raises ``ValueError`` only on a
wrong array shape or sampling rate.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import signal as sps
from tqdm.auto import tqdm

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF",
                          "V1", "V2", "V3", "V4", "V5", "V6")
FEATURES: tuple[str, ...] = ("hr_bpm", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms",
                             "p_axis_deg", "qrs_axis_deg", "t_axis_deg",
                             "sdnn_ms", "rmssd_ms", "n_beats")
"""Keys of the dict returned by :func:`extract_features` (all floats; NaN = not derivable)."""

ANALYSIS_FS = 500.0
_INDEPENDENT = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6: the 8 independent leads
_I, _II, _AVF, _V5 = 0, 1, 5, 10
_P_LEADS = (1, 0, 5)  # II, I, aVF
P_MIN_MV = 0.04
"""Smallest P-wave prominence (mV) accepted as a P wave."""
QRS_THRESHOLD = 0.06
"""QRS = where the spatial velocity exceeds ``iso + QRS_THRESHOLD * (peak - iso)`` (then 0.10,
0.15 when the run reaches the search window's edge, i.e. merged with a P or T wave)."""
QRS_MAX_GAP_MS = 12.0
"""Dips below the threshold shorter than this stay inside the QRS run."""


def _nan_features() -> dict[str, float]:
    return {k: math.nan for k in FEATURES}


def _ms(samples: float, fs: float) -> float:
    return float(samples) * 1000.0 / fs


def _rhythm_lead(filtered: np.ndarray) -> int:
    """Lead for R-peak detection: II, unless its QRS is small (axis near -30 deg).

    QRS complexes have the steepest slopes of the ECG, so the 99th percentile of
    ``|d signal/dt|`` ranks leads by QRS size independently of T waves. Lead II is kept when
    its slope reaches half that of the steepest of II, I and V5; otherwise that lead is used
    (precordial V1-V4 are not candidates: their large, often biphasic complexes mislead the
    detector more than they help).
    """
    cand = [_II, _I, _V5]
    slope = np.percentile(np.abs(np.diff(filtered[:, cand], axis=0)), 99, axis=0)
    if slope[0] >= 0.5 * slope.max():
        return _II
    return cand[int(np.argmax(slope))]


def _rr_features(rpeaks: np.ndarray, fs: float) -> dict[str, float]:
    """Heart rate and time-domain HRV from R-peak sample indices."""
    out = {"hr_bpm": math.nan, "rr_ms": math.nan, "sdnn_ms": math.nan, "rmssd_ms": math.nan}
    if len(rpeaks) < 3:
        return out
    rr = np.diff(rpeaks) * 1000.0 / fs
    med = float(np.median(rr))
    out["rr_ms"] = med
    out["hr_bpm"] = 60000.0 / med
    normal = np.abs(rr - med) <= 0.2 * med
    if normal.sum() >= 3:
        out["sdnn_ms"] = float(np.std(rr[normal], ddof=1))
    pair = normal[1:] & normal[:-1]
    if pair.sum() >= 2:
        out["rmssd_ms"] = float(np.sqrt(np.mean(np.diff(rr)[pair] ** 2)))
    return out


@lru_cache(maxsize=16)
def _filters(fs: float) -> tuple[np.ndarray, np.ndarray | None]:
    hp = sps.butter(2, 0.5, btype="highpass", fs=fs, output="sos")
    lp = sps.butter(4, min(40.0, 0.45 * fs), btype="lowpass", fs=fs, output="sos") if fs > 90 else None
    return hp, lp


def _prefilter(sig: np.ndarray, fs: float) -> np.ndarray:
    """0.5 Hz high-pass and (when fs allows) 40 Hz low-pass, zero phase, all leads at once."""
    hp, lp = _filters(float(fs))
    out = sps.sosfiltfilt(hp, sig, axis=0)
    if lp is not None:
        out = sps.sosfiltfilt(lp, out, axis=0)
    return out


def _resample(sig: np.ndarray, fs: float, target: float) -> tuple[np.ndarray, float]:
    if abs(fs - target) < 1e-9:
        return sig, fs
    frac = Fraction(target / fs).limit_denominator(100)
    out = sps.resample_poly(sig, frac.numerator, frac.denominator, axis=0)
    return out, fs * frac.numerator / frac.denominator


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    k = np.ones(n) / n
    return np.convolve(x, k, mode="same")


def _median_beat(x: np.ndarray, r: np.ndarray, fs: float, rr_s: float
                 ) -> tuple[np.ndarray, int] | None:
    """Median beat ``(window, 12)`` around R peaks ``r`` of the analysis-rate signal ``x``.

    Returns ``(template, r_index_in_template)`` or None when fewer than 2 beats fit.
    """
    pre = round(min(0.40, max(0.20, 0.5 * rr_s)) * fs)
    post = round(min(0.70, max(0.30, 0.85 * rr_s)) * fs)
    # re-align each beat on the spatial magnitude peak (+-40 ms)
    mag = np.sqrt((x[:, _INDEPENDENT] ** 2).sum(axis=1))
    w = int(0.04 * fs)
    offs = np.arange(-w, w + 1)
    idx = np.clip(r[:, None] + offs[None, :], 0, len(x) - 1)
    r = idx[np.arange(len(r)), np.argmax(mag[idx], axis=1)]
    r = r[(r - pre >= 0) & (r + post < len(x))]
    if len(r) < 2:
        return None
    beats = x[r[:, None] + np.arange(-pre, post)[None, :]]  # (n_beats, window, 12)
    tmpl = np.median(beats, axis=0)
    if len(r) >= 4:  # drop beats unlike the median beat (ectopics, artefacts)
        b = beats[:, :, _INDEPENDENT].reshape(len(r), -1)
        t = tmpl[:, _INDEPENDENT].reshape(-1)
        bc = b - b.mean(axis=1, keepdims=True)
        tc = t - t.mean()
        denom = np.linalg.norm(bc, axis=1) * np.linalg.norm(tc) + 1e-12
        keep = (bc @ tc) / denom >= 0.8
        if 2 <= keep.sum() < len(r):
            tmpl = np.median(beats[keep], axis=0)
    return tmpl, pre


def _runs_containing(mask: np.ndarray, i: int, max_gap: int) -> tuple[int, int] | None:
    """Bounds of the run of True in ``mask`` containing ``i``, closing gaps <= max_gap."""
    on = np.flatnonzero(mask)
    if len(on) == 0 or not mask[i]:
        return None
    gaps = np.flatnonzero(np.diff(on) > max_gap + 1)
    starts = np.r_[on[0], on[gaps + 1]]
    ends = np.r_[on[gaps], on[-1]]
    k = np.searchsorted(starts, i, side="right") - 1
    return int(starts[k]), int(ends[k])


def _axis(net_i: float, net_avf: float, min_mv: float = 0.01) -> float:
    if not (np.isfinite(net_i) and np.isfinite(net_avf)):
        return math.nan
    if max(abs(net_i), abs(net_avf)) < min_mv:
        return math.nan
    return float(np.degrees(np.arctan2(2.0 / np.sqrt(3.0) * net_avf, net_i)))


def _mean(seg: np.ndarray) -> np.ndarray:
    """Net area / duration (mean) per lead of a baseline-corrected segment ``(n, 12)``."""
    if len(seg) == 0:
        return np.full(seg.shape[1], np.nan)
    return seg.mean(axis=0)


def _net(seg: np.ndarray) -> np.ndarray:
    """Net amplitude (max + min) per lead of a baseline-corrected segment ``(n, 12)``."""
    if len(seg) == 0:
        return np.full(seg.shape[1], np.nan)
    return seg.max(axis=0) + seg.min(axis=0)


def _p_onset(x: np.ndarray, q_on: int, fs: float) -> int | None:
    """P-wave onset index in a baseline-corrected median beat, or None (no P wave).

    The P wave is the most prominent peak (either polarity) 40-300 ms before QRS onset in
    leads II, I or aVF (whichever shows the most prominent one; prominence must be
    >= ``P_MIN_MV``); its onset is the last sample before the peak that is within 20 % of
    the peak's left-hand prominence from the left base (offset-proof, unlike a fixed
    baseline).
    """
    ms = fs / 1000.0
    lo, hi = max(0, q_on - int(300 * ms)), q_on - int(40 * ms)
    if hi - lo < int(40 * ms):
        return None
    best: tuple[float, int, np.ndarray] | None = None
    for lead in _P_LEADS:
        seg = _smooth(x[lo:hi, lead], int(10 * ms))
        for sign in (1.0, -1.0):
            y = sign * seg
            pk, props = sps.find_peaks(y, prominence=P_MIN_MV, wlen=int(200 * ms))
            if len(pk) == 0:
                continue
            k = int(np.argmax(props["prominences"]))
            left = int(props["left_bases"][k])
            prom_left = y[pk[k]] - y[left]
            if prom_left < P_MIN_MV or pk[k] - left < int(10 * ms):
                continue
            if best is None or prom_left > best[0]:
                rel = y[left:pk[k] + 1] - y[left]
                best = (prom_left, left, rel)
    if best is None:
        return None
    prom, left, rel = best
    below = np.flatnonzero(rel <= 0.2 * prom)
    return lo + left + int(below[-1])


def _template_intervals(tmpl: np.ndarray, r0: int, fs: float, rr_s: float
                        ) -> dict[str, float]:
    """PR/QRS/QT and axes from a median beat sampled at ``fs`` with R at index ``r0``."""
    out = {k: math.nan for k in ("pr_ms", "qrs_ms", "qt_ms", "p_axis_deg", "qrs_axis_deg",
                                 "t_axis_deg")}
    n = len(tmpl)
    ms = fs / 1000.0
    # --- QRS from the spatial velocity --------------------------------------------------
    vel = np.sqrt((np.gradient(tmpl[:, _INDEPENDENT], axis=0) ** 2).sum(axis=1)) * fs
    vel = _smooth(vel, int(8 * ms))
    lo, hi = max(0, r0 - int(140 * ms)), min(n, r0 + int(180 * ms))
    near = slice(max(0, r0 - int(60 * ms)), min(n, r0 + int(60 * ms)))
    ipk = near.start + int(np.argmax(vel[near]))
    vmax = vel[ipk]
    iso = float(np.percentile(vel, 10))
    if not np.isfinite(vmax) or vmax <= iso * 1.5:
        return out
    run = None
    for frac in (QRS_THRESHOLD, 0.10, 0.15):  # raise it if P or T waves merge into the QRS
        mask = np.zeros(n, bool)
        mask[lo:hi] = vel[lo:hi] >= iso + frac * (vmax - iso)
        run = _runs_containing(mask, ipk, int(QRS_MAX_GAP_MS * ms))
        if run is not None and lo < run[0] and run[1] < hi - 1:
            break
        run = None
    if run is None:  # no clean QRS inside the window
        return out
    q_on, q_off = run
    out["qrs_ms"] = (q_off - q_on) / ms
    # baseline: PR segment just before QRS onset
    b0, b1 = max(0, q_on - int(20 * ms)), max(1, q_on - int(4 * ms))
    base = np.median(tmpl[b0:b1], axis=0)
    x = tmpl - base
    net_qrs = _net(x[q_on:q_off + 1])
    out["qrs_axis_deg"] = _axis(net_qrs[_I], net_qrs[_AVF])
    # --- P wave: the most prominent deflection before QRS onset ---------------------------
    p_on = _p_onset(x, q_on, fs)
    if p_on is not None:
        out["pr_ms"] = (q_on - p_on) / ms
        pb = np.median(tmpl[max(0, p_on - int(20 * ms)):p_on + 1], axis=0)
        net_p = _mean(tmpl[p_on:q_on - int(20 * ms)] - pb)
        out["p_axis_deg"] = _axis(net_p[_I], net_p[_AVF])
    # --- T end: tangent on the RMS curve -------------------------------------------------
    rms = _smooth(np.sqrt((x[:, _INDEPENDENT] ** 2).mean(axis=1)), int(20 * ms))
    t_lo = q_off + int(60 * ms)
    t_hi = min(n, r0 + int(min(0.75 * rr_s, 0.70) * fs))
    if t_hi - t_lo > int(60 * ms):
        itp = t_lo + int(np.argmax(rms[t_lo:t_hi]))
        slope = np.gradient(rms)
        if t_hi - itp > int(10 * ms):
            isl = itp + int(np.argmin(slope[itp:t_hi]))
            s = slope[isl]
            level = float(rms[isl:t_hi].min())
            if s < 0 and rms[itp] - level > 0.02:
                t_end = isl + (level - rms[isl]) / s
                t_end = min(max(t_end, isl), t_hi - 1)
                out["qt_ms"] = (t_end - q_on) / ms
                ie = round(t_end)
                net_t = _mean(x[q_off + int(40 * ms):ie + 1])
                out["t_axis_deg"] = _axis(net_t[_I], net_t[_AVF])
    return out


def _prominence_intervals(lead2_up: np.ndarray, r_up: np.ndarray, fs: float
                          ) -> dict[str, float]:
    """neurokit2 ``prominence`` delineation of lead II at the analysis rate (medians)."""
    import neurokit2 as nk

    out = {k: math.nan for k in ("pr_ms", "qrs_ms", "qt_ms")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, w = nk.ecg_delineate(lead2_up, r_up, sampling_rate=int(fs), method="prominence")
    g = {k: np.asarray(w.get(k, []), float) for k in
         ("ECG_P_Onsets", "ECG_R_Onsets", "ECG_R_Offsets", "ECG_T_Offsets")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["qrs_ms"] = _ms(np.nanmedian(g["ECG_R_Offsets"] - g["ECG_R_Onsets"]), fs)
        out["pr_ms"] = _ms(np.nanmedian(g["ECG_R_Onsets"] - g["ECG_P_Onsets"]), fs)
        out["qt_ms"] = _ms(np.nanmedian(g["ECG_T_Offsets"] - g["ECG_R_Onsets"]), fs)
    return out


def extract_features(signal: np.ndarray, fs: float, method: str = "template"
                     ) -> dict[str, float]:
    """ECG features of one 12-lead recording (see the module docstring for the method).

    Args:
        signal: ``(n_samples, 12)`` array in mV, leads I, II, III, aVR, aVL, aVF, V1-V6.
            NaN samples are linearly interpolated (a lead that is all NaN becomes flat).
        fs: sampling rate in Hz (>= 50).
        method: ``"template"`` (default: global intervals from the 12-lead median beat) or
            ``"prominence"`` (PR/QRS/QT from ``neurokit2.ecg_delineate(method="prominence")``
            on lead II; axes and rhythm features are the same in both).

    Returns:
        dict with the keys of :data:`FEATURES`: ``hr_bpm``, ``rr_ms`` (median RR),
        ``pr_ms``, ``qrs_ms``, ``qt_ms``, ``qtc_ms`` (Bazett), ``p_axis_deg``,
        ``qrs_axis_deg``, ``t_axis_deg``, ``sdnn_ms``, ``rmssd_ms``, ``n_beats`` (R peaks
        found); NaN where not derivable.
    """
    import neurokit2 as nk

    sig = np.asarray(signal, dtype=float)
    if sig.ndim != 2 or sig.shape[1] != 12:
        raise ValueError(f"signal must be (n_samples, 12), got {sig.shape}")
    if not fs or fs < 50:
        raise ValueError(f"sampling rate must be >= 50 Hz, got {fs}")
    if method not in ("template", "prominence"):
        raise ValueError(f"unknown method {method!r}")
    out = _nan_features()
    if sig.shape[0] < int(2 * fs):
        return out
    if np.isnan(sig).any():
        sig = pd.DataFrame(sig).interpolate(limit_direction="both").fillna(0.0).to_numpy()
    filtered = _prefilter(sig, fs)
    lead = _rhythm_lead(filtered)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clean = nk.ecg_clean(sig[:, lead], sampling_rate=round(fs))
            _, info = nk.ecg_peaks(clean, sampling_rate=round(fs))
            rpeaks = np.asarray(info["ECG_R_Peaks"], dtype=int)
        except Exception:  # noqa: BLE001 -- neurokit2 raises many types on flat/odd signals
            return out
    out["n_beats"] = float(len(rpeaks))
    out.update(_rr_features(rpeaks, fs))
    if len(rpeaks) < 3 or not np.isfinite(out["rr_ms"]):
        return out
    rr_s = out["rr_ms"] / 1000.0
    up, fs_up = _resample(filtered, fs, ANALYSIS_FS)
    r_up = np.clip(np.round(rpeaks * fs_up / fs).astype(int), 0, len(up) - 1)
    mb = _median_beat(up, r_up, fs_up, rr_s)
    if mb is not None:
        out.update(_template_intervals(mb[0], mb[1], fs_up, rr_s))
    if method == "prominence":
        try:
            lead2 = nk.ecg_clean(up[:, _II], sampling_rate=int(fs_up))
            out.update(_prominence_intervals(lead2, r_up, fs_up))
        except Exception:  # noqa: BLE001
            out.update({"pr_ms": math.nan, "qrs_ms": math.nan, "qt_ms": math.nan})
    if np.isfinite(out["qt_ms"]):
        out["qtc_ms"] = out["qt_ms"] / math.sqrt(rr_s)
    return out


def _extract_one(args: tuple[np.ndarray, float, str]) -> dict[str, float]:
    return extract_features(*args)


def extract_many(signals: np.ndarray | list[np.ndarray], fs: float, processes: int = 1,
                 method: str = "template", progress: bool = True,
                 ids: list[Any] | None = None) -> pd.DataFrame:
    """Features of many recordings, one row each (columns :data:`FEATURES`).

    Args:
        signals: ``(n, n_samples, 12)`` array or a list of ``(n_samples, 12)`` arrays.
        fs: sampling rate in Hz (the same for all recordings).
        processes: worker processes (``1`` = in this process; ``2`` suits a 2-core box).
        method: passed to :func:`extract_features`.
        progress: show a tqdm progress bar.
        ids: optional index for the returned frame (same length as ``signals``).
    """
    n = len(signals)
    jobs = ((signals[i], fs, method) for i in range(n))
    bar = {"total": n, "desc": "ECG features", "unit": "rec", "disable": not progress}
    if processes > 1 and n > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp
        with ctx.Pool(processes) as pool:
            rows = list(tqdm(pool.imap(_extract_one, jobs, chunksize=16), **bar))
    else:
        rows = [_extract_one(j) for j in tqdm(jobs, **bar)]
    df = pd.DataFrame(rows, columns=list(FEATURES), dtype=float)
    if ids is not None:
        df.index = pd.Index(ids)
    return df


def add_features(table: pd.DataFrame, signals: np.ndarray | list[np.ndarray], fs: float,
                 processes: int = 1, method: str = "template", progress: bool = True
                 ) -> pd.DataFrame:
    """``table`` (one row per recording, same order as ``signals``) plus :data:`FEATURES`.

    Existing columns with those names are replaced; ``table.attrs`` are kept.
    """
    if len(table) != len(signals):
        raise ValueError(f"{len(table)} table rows but {len(signals)} signals")
    feats = extract_many(signals, fs, processes=processes, method=method, progress=progress)
    feats.index = table.index
    base = table.drop(columns=[c for c in FEATURES if c in table.columns])
    out = pd.concat([base, feats], axis=1)
    out.attrs = dict(table.attrs)
    return out
