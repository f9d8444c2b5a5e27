"""Fast 12-lead ECG images on ECG paper (for vision-language methods).

Layout (the standard printout): three rows of four 2.5 s columns -- I, aVR, V1, V4 /
II, aVL, V2, V5 / III, aVF, V3, V6 (each column shows its leads during the same 2.5 s
slice of the recording) -- and a fourth row with the full 10 s of lead II as the rhythm
strip. Paper: 1 mm minor grid (light pink), 5 mm major grid (red), 25 mm/s, 10 mm/mV, a
1 mV calibration pulse at the start of each row. The paper is scaled uniformly to fit
``width_px`` (262 mm including margins), so 512 px wide gives ~2 px/mm.

Drawing uses numpy (the grid, cached per image size) and ``PIL.ImageDraw`` polylines, not
matplotlib, which is an order of magnitude slower per image.
Files are written atomically (:func:`clinlm.io.atomic_path`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from clinlm.io import atomic_path

LAYOUT: tuple[tuple[str, ...], ...] = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"),
                                       ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
_LEAD_INDEX = {name: i for i, name in enumerate(
    ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))}

MM_PER_S = 25.0
MM_PER_MV = 10.0
MARGIN_LEFT_MM, MARGIN_RIGHT_MM, MARGIN_Y_MM = 10.0, 2.0, 2.0
STRIP_S = 10.0
PAPER_W_MM = MARGIN_LEFT_MM + STRIP_S * MM_PER_S + MARGIN_RIGHT_MM  # 262 mm

BACKGROUND = (255, 255, 255)
MINOR = (255, 214, 214)  # 1 mm lines
MAJOR = (236, 120, 120)  # 5 mm lines
TRACE = (0, 0, 0)


class _Geometry:
    """Pixel geometry for one image size (scale, row baselines, origin)."""

    def __init__(self, width_px: int, height_px: int) -> None:
        if width_px < 64 or height_px < 48:
            raise ValueError(f"image too small: {width_px}x{height_px} (min 64x48)")
        self.w, self.h = int(width_px), int(height_px)
        self.scale = self.w / PAPER_W_MM  # px per mm
        height_mm = self.h / self.scale
        self.row_mm = (height_mm - 2 * MARGIN_Y_MM) / 4.0
        self.x0 = MARGIN_LEFT_MM * self.scale
        # baseline at 60 % of each row band (QRS complexes are mostly upright)
        self.baselines = [(MARGIN_Y_MM + (r + 0.6) * self.row_mm) * self.scale for r in range(4)]


@lru_cache(maxsize=8)
def _grid(width_px: int, height_px: int) -> np.ndarray:
    """The ECG-paper background ``(h, w, 3)`` uint8 (read-only; copy before drawing)."""
    g = _Geometry(width_px, height_px)
    img = np.empty((g.h, g.w, 3), np.uint8)
    img[:] = BACKGROUND
    n_x = int(np.ceil(g.w / g.scale)) + 1
    n_y = int(np.ceil(g.h / g.scale)) + 1
    for step, colour in ((1, MINOR), (5, MAJOR)):
        # lines aligned with the trace origin (x0) and the top margin
        xs = np.round(g.x0 + np.arange(-n_x, n_x, step) * g.scale).astype(int)
        ys = np.round(MARGIN_Y_MM * g.scale + np.arange(-n_y, n_y, step) * g.scale).astype(int)
        xs, ys = xs[(xs >= 0) & (xs < g.w)], ys[(ys >= 0) & (ys < g.h)]
        img[:, xs] = colour
        img[ys, :] = colour
    img.setflags(write=False)
    return img


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _prepare(signal: np.ndarray, fs: float, baseline_filter: bool) -> np.ndarray:
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[1] != 12:
        raise ValueError(f"signal must be (n_samples, 12), got {sig.shape}")
    if fs <= 0:
        raise ValueError(f"bad sampling rate {fs}")
    sig = sig[: round(STRIP_S * fs)]
    sig = np.nan_to_num(sig - np.nanmedian(sig, axis=0), nan=0.0)
    if baseline_filter and len(sig) > 3 * fs:
        from scipy import signal as sps

        sig = sps.sosfiltfilt(_baseline_sos(float(fs)), sig, axis=0)
    return sig


@lru_cache(maxsize=8)
def _baseline_sos(fs: float) -> np.ndarray:
    from scipy import signal as sps

    return sps.butter(2, 0.5, btype="highpass", fs=fs, output="sos")


def draw_ecg(signal: np.ndarray, fs: float, width_px: int = 512, height_px: int = 384,
             baseline_filter: bool = True) -> Image.Image:
    """The 12-lead printout of ``signal`` ``(n_samples, 12)`` (mV) as an RGB PIL image.

    ``baseline_filter`` applies a 0.5 Hz zero-phase high-pass (an ECG cart's baseline-wander
    filter) before drawing; each lead is also centred on its median.
    """
    sig = _prepare(signal, fs, baseline_filter)
    g = _Geometry(width_px, height_px)
    img = Image.fromarray(_grid(g.w, g.h).copy())
    draw = ImageDraw.Draw(img)
    lw = max(1, round(g.scale / 2.5))
    font = _font(max(8, round(3.5 * g.scale)))
    px_per_s = MM_PER_S * g.scale
    px_per_mv = MM_PER_MV * g.scale
    n = len(sig)
    col_n = round(2.5 * fs)

    def trace(values: np.ndarray, start_s: float, x_left: float, y0: float) -> None:
        if len(values) < 2:
            return
        x = x_left + (np.arange(len(values)) / fs) * px_per_s
        y = np.clip(y0 - values * px_per_mv, -g.h, 2 * g.h)
        draw.line(np.column_stack([x, y]).ravel().tolist(), fill=TRACE, width=lw)

    for r, y0 in enumerate(g.baselines):
        # calibration pulse: 1 mV (10 mm) x 0.2 s (5 mm)
        xa, s = g.x0 - 8.0 * g.scale, g.scale
        draw.line([xa, y0, xa + s, y0, xa + s, y0 - 10 * s, xa + 6 * s, y0 - 10 * s,
                   xa + 6 * s, y0, xa + 7 * s, y0], fill=TRACE, width=lw)
        if r < 3:
            for c, lead in enumerate(LAYOUT[r]):
                a = c * col_n
                seg = sig[a:min(a + col_n + 1, n), _LEAD_INDEX[lead]]
                x_left = g.x0 + c * 2.5 * px_per_s
                trace(seg, c * 2.5, x_left, y0)
                label_y = y0 - 0.55 * g.row_mm * s
                draw.text((x_left + 2, label_y), lead, fill=TRACE, font=font)
                if c > 0:  # lead-change tick
                    draw.line([x_left, y0 - 2.5 * s, x_left, y0 + 2.5 * s], fill=TRACE, width=lw)
        else:
            trace(sig[:, _LEAD_INDEX[RHYTHM_LEAD]], 0.0, g.x0, y0)
            draw.text((g.x0 + 2, y0 - 0.55 * g.row_mm * s), RHYTHM_LEAD, fill=TRACE, font=font)
    return img


def render_ecg(signal: np.ndarray, fs: float, path: str | os.PathLike, width_px: int = 512,
               height_px: int = 384) -> Path:
    """Draw ``signal`` (:func:`draw_ecg`) and write it to ``path`` atomically.

    The format follows the suffix: ``.png`` (fast, low compression) or ``.jpg``/``.jpeg``
    (quality 90). Returns the path.
    """
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported image suffix {path.suffix!r} (use .png or .jpg)")
    img = draw_ecg(signal, fs, width_px, height_px)
    opts = {"compress_level": 1} if fmt == "PNG" else {"quality": 90}
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **opts)
    return path


def render_many(signals: np.ndarray | Sequence[np.ndarray], fs: float,
                paths: Sequence[str | os.PathLike], width_px: int = 512, height_px: int = 384,
                progress: bool = True) -> list[Path]:
    """:func:`render_ecg` for each ``signals[i]`` -> ``paths[i]`` (with a progress bar)."""
    if len(signals) != len(paths):
        raise ValueError(f"{len(signals)} signals but {len(paths)} paths")
    return [render_ecg(signals[i], fs, paths[i], width_px, height_px)
            for i in tqdm(range(len(paths)), desc="render ECG", unit="img",
                          disable=not progress)]
