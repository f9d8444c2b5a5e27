"""PTB-XL loader: real 12-lead recordings with demographics (age is the target by default).

PTB-XL (Wagner et al., Sci Data 2020; PhysioNet, CC BY 4.0) has no vascular age; the task
on real data predicts ``target_column`` (default chronological ``age``, an "ECG age" proxy)
from the ECG and the other demographics. ``ptbxl_database.csv`` codes ``sex`` as 0 = male,
1 = female (PhysioNet documentation; the 500-record subset agrees: mean height 174 cm for
0 vs 161 cm for 1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from clinlm.io import DataError
from clinlm.vascular.ecg import LEADS

log = logging.getLogger(__name__)

_DB = "ptbxl_database.csv"
_REQUIRED = ("ecg_id", "patient_id", "age", "sex", "height", "weight")


def _read_database(folder: Path) -> pd.DataFrame:
    path = folder / _DB
    if not path.is_file():
        raise DataError(path, "PTB-XL database file not found")
    db = pd.read_csv(path)
    missing = [c for c in _REQUIRED if c not in db.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}")
    return db


def _lead_order(names: list[str], path: str) -> list[int]:
    """Indices that put the record's leads in :data:`LEADS` order (names case-insensitive)."""
    upper = [n.upper() for n in names]
    try:
        return [upper.index(lead.upper()) for lead in LEADS]
    except ValueError as e:
        raise DataError(path, f"leads {names} do not include all of {list(LEADS)}") from e


def load_ptbxl(folder: str | os.PathLike, target_column: str = "age",
               max_records: int | None = None, sampling_rate: int = 100,
               progress: bool = True) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Read ``ptbxl_database.csv`` and the WFDB records of a PTB-XL folder.

    Args:
        folder: the PTB-XL root (holds ``ptbxl_database.csv`` and ``records100/``).
        target_column: a numeric column of the database used as the target (copied to
            ``target``); rows where it is missing are dropped (count logged and stored in
            ``table.attrs["n_dropped_missing_target"]``).
        max_records: read only the first ``max_records`` rows of the database (by
            ``ecg_id``), before dropping missing targets.
        sampling_rate: 100 (``filename_lr``) or 500 (``filename_hr``).
        progress: tqdm progress bar over records.

    Returns:
        ``(table, signals, fs)``: ``signals`` ``(n, n_samples, 12)`` float32 in mV, leads
        I, II, III, aVR, aVL, aVF, V1-V6; ``table`` in the same order with columns ``id``
        (``ecg_id`` as str), ``subject_id`` (``patient_id`` as str, for group splits),
        ``age`` (years; values above 120 -- anonymisation placeholders -- become NaN, and
        so count as a missing target when ``target_column="age"``),
        ``sex`` (``M``/``F``), ``height_cm``, ``weight_kg``, ``bmi`` (only when both
        height and weight are present), ``target`` (float), ``report``, ``scp_codes``,
        ``strat_fold`` (the official folds) and ``record`` (the WFDB path read).

    Raises:
        DataError: missing database/record file, unknown ``target_column``, non-numeric
            target, records with a different sampling rate or missing leads.
    """
    import wfdb

    folder = Path(folder)
    db = _read_database(folder).sort_values("ecg_id", kind="stable").reset_index(drop=True)
    db_path = folder / _DB
    if target_column not in db.columns:
        raise DataError(db_path, f"no target column {target_column!r}", column=target_column)
    if max_records is not None:
        db = db.iloc[:max_records].copy()
    file_col = {100: "filename_lr", 500: "filename_hr"}.get(sampling_rate)
    if file_col is None:
        raise ValueError("sampling_rate must be 100 or 500")
    target = pd.to_numeric(db[target_column], errors="coerce")
    bad = target.isna() & db[target_column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(db_path, f"non-numeric target {db[target_column].iloc[i]!r}",
                        row=i + 1, column=target_column)
    age = pd.to_numeric(db["age"], errors="coerce").where(lambda a: a <= 120)
    if target_column == "age":
        target = age
    keep = target.notna().to_numpy()
    n_drop = int((~keep).sum())
    if n_drop:
        log.warning("PTB-XL: dropped %d of %d records with missing %r", n_drop, len(db),
                    target_column)
    rows = np.flatnonzero(keep)
    db, target = db.iloc[rows], target.iloc[rows]

    sigs: list[np.ndarray] = []
    fs_seen: float | None = None
    for row, rel in tqdm(zip(rows, db[file_col], strict=True), total=len(db), desc="PTB-XL",
                         unit="rec", disable=not progress):
        rec = folder / str(rel)
        if not rec.with_suffix(".hea").is_file():
            raise DataError(db_path, f"record {rec}.hea not found", row=int(row) + 1,
                            column=file_col)
        sig, meta = wfdb.rdsamp(str(rec))
        if fs_seen is None:
            fs_seen = float(meta["fs"])
        elif float(meta["fs"]) != fs_seen:
            raise DataError(rec, f"sampling rate {meta['fs']} differs from {fs_seen}")
        sigs.append(sig[:, _lead_order(list(meta["sig_name"]), str(rec))].astype(np.float32))
    lengths = {s.shape[0] for s in sigs}
    if len(lengths) > 1:
        raise DataError(folder, f"records have different lengths {sorted(lengths)}")
    signals = np.stack(sigs) if sigs else np.zeros((0, 0, 12), np.float32)

    height = pd.to_numeric(db["height"], errors="coerce")
    weight = pd.to_numeric(db["weight"], errors="coerce")
    sex = db["sex"].map({0: "M", 1: "F"})
    table = pd.DataFrame({
        "id": db["ecg_id"].astype(int).astype(str).to_numpy(),
        "subject_id": db["patient_id"].astype("Int64").astype(str).to_numpy(),
        "age": age.iloc[rows].to_numpy(),
        "sex": sex.to_numpy(),
        "height_cm": height.to_numpy(),
        "weight_kg": weight.to_numpy(),
        "bmi": (weight / (height / 100.0) ** 2).to_numpy(),
        "target": target.to_numpy(dtype=float),
        "report": db.get("report", pd.Series("", index=db.index)).to_numpy(),
        "scp_codes": db.get("scp_codes", pd.Series("", index=db.index)).to_numpy(),
        "strat_fold": db.get("strat_fold", pd.Series(np.nan, index=db.index)).to_numpy(),
        "record": db[file_col].astype(str).to_numpy(),
    })
    table.attrs.update(n_dropped_missing_target=n_drop, target_column=target_column,
                       source="ptbxl")
    return table, signals, float(fs_seen or sampling_rate)
