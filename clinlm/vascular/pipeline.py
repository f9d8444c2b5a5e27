"""Glue between the generic stages (download, statements, images) and the vascular modules.

Raw folder (``data/raw/vascular_age``), written by :func:`download`:

* ``subjects.parquet`` -- one row per recording: ids, demographics (+ risk factors and
  latent/derivation columns for the synthetic cohort), the target, and the extracted ECG
  features (:data:`clinlm.vascular.ecg.FEATURES`). ``attrs`` (kept by Parquet) hold
  ``source``, ``target_column`` and, for the synthetic cohort, ``noise_sd`` and
  ``noise_floor_mae``.
* ``signals.npy`` -- ``(n, n_samples, 12)`` float32 in mV, rows in the table's order, and
  ``signals.json`` (``fs``, ``leads``, ``units``, ``shape``); synthetic and PTB-XL only (a
  CSV of features has no recordings, so it has no images either).

All files are written atomically. Relative paths in the config (``ptbxl_dir``,
``csv_path``) are relative to the working directory (the repository root under DVC).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinlm.io import DataError, atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "ptbxl", "csv")
DOWNLOAD_KEYS = {
    "source": "synthetic | ptbxl | csv",
    "n_synthetic": "subjects of the synthetic cohort",
    "noise_sd": "SD (years) of the noise on the synthetic target",
    "ptbxl_dir": "PTB-XL root folder (ptbxl_database.csv + records100/)",
    "target_column": "PTB-XL database column used as the target (default age)",
    "max_records": "PTB-XL: read only the first N records (null = all)",
    "sampling_rate": "PTB-XL: 100 (default) or 500 Hz records",
    "csv_path": "a CSV of ECG features + demographics + measured vascular age",
    "id_column": "CSV: record id column",
    "csv_target_column": "CSV: measured vascular age column (years)",
    "ecg_columns": "CSV: {column: unit} of ECG features",
    "demographic_columns": "CSV: {column: unit} of demographics",
    "group_column": "CSV: subject id column (several records per subject), or null",
    "processes": "worker processes for ECG feature extraction (default 1)",
}
STATEMENT_KEYS = ("include_age", "include_risk_factors")
SUBJECTS, SIGNALS, SIGNALS_META = "subjects.parquet", "signals.npy", "signals.json"


def _check_keys(section: dict[str, Any], allowed: Any, where: str) -> None:
    for key in section:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: unknown key; allowed: {', '.join(allowed)}")


def _require(cfg: dict[str, Any], key: str, source: str) -> Any:
    if cfg.get(key) in (None, "", {}):
        raise ValueError(f"tasks.vascular_age.download.{key} is required for source {source!r} "
                         f"({DOWNLOAD_KEYS[key]})")
    return cfg[key]


def _load_user_csv(cfg: dict[str, Any], path: str | os.PathLike) -> pd.DataFrame:
    """:func:`~clinlm.vascular.csvsource.load_csv` with the column settings of ``cfg``."""
    from clinlm.vascular.csvsource import load_csv

    ecg, demo = dict(cfg.get("ecg_columns") or {}), dict(cfg.get("demographic_columns") or {})
    if not ecg and not demo:
        raise ValueError("tasks.vascular_age.download.ecg_columns / demographic_columns are "
                         "empty: map the CSV's columns to units, e.g. {QTc: ms, Age: years}")
    return load_csv(path, cfg.get("id_column") or "id",
                    cfg.get("csv_target_column") or "vascular_age", ecg, demo,
                    cfg.get("group_column"))


def _write_signals(out_dir: Path, signals: np.ndarray, fs: float) -> dict[str, Any]:
    from clinlm.vascular.ecg import LEADS

    signals = np.ascontiguousarray(signals, dtype=np.float32)
    with atomic_path(out_dir / SIGNALS) as tmp, open(tmp, "wb") as f:
        np.save(f, signals)
    meta = {"fs": float(fs), "leads": list(LEADS), "units": "mV", "shape": list(signals.shape)}
    write_json(out_dir / SIGNALS_META, meta)
    return meta


def download(cfg: dict[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
    """Generate or read the vascular-age raw data into ``out_dir`` (files: module docstring).

    Args:
        cfg: ``tasks.vascular_age.download`` (keys: :data:`DOWNLOAD_KEYS`).
        seed: the global seed (synthetic cohort).
        out_dir: the raw folder.

    Returns:
        Facts for ``download.json``: ``data_source``, ``n_rows``, ``n_subjects``,
        ``target_column``, ``seconds``; synthetic: ``noise_sd``, ``noise_floor_mae`` (the MAE
        of a perfect model, :func:`~clinlm.vascular.synthetic.noise_floor_mae`); PTB-XL:
        ``n_dropped_missing_target``; with signals: ``fs``, ``n_samples``; with extracted
        features: ``ecg_features_missing`` (NaN count per feature).
    """
    _check_keys(cfg, DOWNLOAD_KEYS, "tasks.vascular_age.download")
    source = cfg.get("source", "synthetic")
    if source not in SOURCES:
        raise ValueError(f"tasks.vascular_age.download.source: {source!r} not one of {SOURCES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processes = int(cfg.get("processes") or 1)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"data_source": source}
    signals, fs = None, None
    if source == "synthetic":
        from clinlm.vascular.synthetic import generate_cohort, noise_floor_mae

        noise_sd = float(cfg.get("noise_sd", 4.0))
        table, signals, fs = generate_cohort(n=int(cfg.get("n_synthetic", 1500)), seed=seed,
                                             noise_sd=noise_sd, processes=processes)
        table.attrs.update(source="synthetic", target_column="vascular_age")
        info.update(noise_sd=noise_sd, noise_floor_mae=round(noise_floor_mae(noise_sd), 4))
    elif source == "ptbxl":
        from clinlm.vascular.ecg import add_features
        from clinlm.vascular.ptbxl import load_ptbxl

        folder = Path(_require(cfg, "ptbxl_dir", source))
        target = cfg.get("target_column") or "age"
        table, signals, fs = load_ptbxl(folder, target_column=target,
                                        max_records=cfg.get("max_records"),
                                        sampling_rate=int(cfg.get("sampling_rate") or 100))
        table = add_features(table, signals, fs, processes=processes)
        info.update(ptbxl_dir=str(folder), ptbxl_target_column=target,
                    n_dropped_missing_target=int(table.attrs.get("n_dropped_missing_target", 0)))
    else:
        table = _load_user_csv(cfg, _require(cfg, "csv_path", source))
        info["csv_path"] = str(cfg["csv_path"])
        for stale in (SIGNALS, SIGNALS_META):  # a previous source's recordings
            (out_dir / stale).unlink(missing_ok=True)
    if len(table) == 0:
        raise DataError(out_dir, f"source {source!r} produced no rows")

    write_parquet(out_dir / SUBJECTS, table)
    info.update(n_rows=len(table), n_subjects=int(table["subject_id"].nunique()),
                target_column=_target_column(table))
    if signals is not None:
        meta = _write_signals(out_dir, signals, fs)
        info.update(fs=meta["fs"], n_samples=int(meta["shape"][1]))
        from clinlm.vascular.ecg import FEATURES
        info["ecg_features_missing"] = {c: int(table[c].isna().sum()) for c in FEATURES
                                        if c in table.columns}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("vascular_age: %d rows from %s in %.1f s", len(table), source, info["seconds"])
    return info


def _target_column(raw: pd.DataFrame) -> str:
    """The column holding the target: ``target`` (PTB-XL) or ``vascular_age``."""
    if raw.attrs.get("source") == "ptbxl" or ("target" in raw.columns
                                              and "vascular_age" not in raw.columns):
        return "target"
    return "vascular_age"


def _statement_options(task_cfg: dict[str, Any]) -> dict[str, Any]:
    opts = dict(task_cfg.get("statements") or {})
    _check_keys(opts, STATEMENT_KEYS, "tasks.vascular_age.statements")
    return opts


def build_table(task_cfg: dict[str, Any], raw_dir: Path) -> pd.DataFrame:
    """``id, group, statement, label, f_*`` from ``raw_dir/subjects.parquet``.

    ``task_cfg["statements"]`` may set ``include_age`` / ``include_risk_factors``
    (:func:`clinlm.vascular.statements.build_table`; by default age is left out when it is
    the target, as on PTB-XL).
    """
    from clinlm.vascular.statements import build_table as statements_table

    path = Path(raw_dir) / SUBJECTS
    if not path.is_file():
        raise DataError(path, "raw vascular table not found (run the download stage first)")
    raw = pd.read_parquet(path)
    return statements_table(raw, _target_column(raw), **_statement_options(task_cfg))


def table_from_csv(task_cfg: dict[str, Any], path: Path) -> pd.DataFrame:
    """A user's CSV (columns as in ``task_cfg["download"]``'s CSV settings) -> statements table.

    The target column may be absent (new patients to predict): the table's ``label`` is
    then NaN. Errors name the user's file, row and column.
    """
    from clinlm.vascular.statements import build_table as statements_table

    cfg = dict(task_cfg.get("download") or {})
    target = cfg.get("csv_target_column") or "vascular_age"
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    header = pd.read_csv(path, nrows=0).columns
    if target in header:
        raw = _load_user_csv(cfg, path)
        return statements_table(raw, "vascular_age", **_statement_options(task_cfg))
    # unlabeled: validate a copy with a placeholder target, report errors against the user's file
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame[target] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        frame.to_csv(copy, index=False)
        try:
            raw = _load_user_csv(cfg, copy)
        except DataError as e:
            prefix = str(DataError(copy, "", e.row, e.column))  # "<copy>, row r, column 'c': "
            raise DataError(path, str(e).removeprefix(prefix), e.row, e.column) from e
    table = statements_table(raw, "vascular_age", **_statement_options(task_cfg))
    table["label"] = np.nan
    return table


def render_images(raw_dir: Path, out_dir: Path, width_px: int, height_px: int) -> dict[str, Any]:
    """Render every recording of ``raw_dir`` as ``out_dir/<id>.png`` (ECG paper, 12 leads).

    Returns ``{"n_images", "seconds", "images_per_second", "width_px", "height_px"}``.
    """
    from clinlm.vascular.render import render_many

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    sig_path = raw_dir / SIGNALS
    if not sig_path.is_file():
        raise DataError(sig_path, "no ECG recordings (the csv source has features only; "
                                  "images need source synthetic or ptbxl)")
    meta = json.loads((raw_dir / SIGNALS_META).read_text())
    ids = pd.read_parquet(raw_dir / SUBJECTS, columns=["id"])["id"].astype(str).tolist()
    signals = np.load(sig_path, mmap_mode="r")
    if len(signals) != len(ids):
        raise DataError(sig_path, f"{len(signals)} recordings but {len(ids)} rows in {SUBJECTS}")
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise DataError(raw_dir / SUBJECTS, f"ids not usable as file names: {bad[:5]}",
                        column="id")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    render_many(signals, float(meta["fs"]), [out_dir / f"{i}.png" for i in ids], width_px,
                height_px)
    seconds = time.perf_counter() - t0
    return {"n_images": len(ids), "seconds": round(seconds, 2),
            "images_per_second": round(len(ids) / seconds, 1) if seconds > 0 else None,
            "width_px": int(width_px), "height_px": int(height_px)}
