"""The vascular-age task behind the generic stages (registered as ``vascular_age``).

:class:`VascularAgeTask` glues the generic stages (download, statements, images) to the
vascular modules; :class:`VascularDownload` / :class:`VascularStatements` are the one home
of its config keys and defaults.

Raw folder (``data/raw/vascular_age``), written by :meth:`VascularAgeTask.download`:

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from clinlm.io import DataError, atomic_path, write_json, write_parquet
from clinlm.tasks import Task, TaskConfig

log = logging.getLogger(__name__)

SUBJECTS, SIGNALS, SIGNALS_META = "subjects.parquet", "signals.npy", "signals.json"


class VascularDownload(TaskConfig):
    """``tasks.vascular_age.download``: the one home of its keys and defaults.

    ``null`` means the default. The CSV mapping keys feed
    :func:`clinlm.vascular.csvsource.load_csv` (units: its module docstring).
    """

    source: Literal["synthetic", "ptbxl", "csv"] = Field(
        "synthetic", description="synthetic | ptbxl | csv")
    n_synthetic: int = Field(1500, ge=1, description="subjects of the synthetic cohort")
    noise_sd: float = Field(4.0, ge=0, description="SD (years) of the noise on the synthetic "
                                                   "target")
    ptbxl_dir: str | None = Field(None, description="PTB-XL root folder (ptbxl_database.csv "
                                                    "+ records100/)")
    target_column: str = Field("age", min_length=1,
                               description="PTB-XL database column used as the target")
    max_records: int | None = Field(None, ge=1, description="PTB-XL: read only the first N "
                                                            "records (null = all)")
    sampling_rate: Literal[100, 500] = Field(100, description="PTB-XL: 100 or 500 Hz records")
    csv_path: str | None = Field(None, description="a CSV of ECG features + demographics + "
                                                   "measured vascular age")
    id_column: str = Field("id", min_length=1, description="CSV: record id column")
    csv_target_column: str = Field("vascular_age", min_length=1,
                                   description="CSV: measured vascular age column (years)")
    ecg_columns: dict[str, str] = Field({}, description="CSV: {column: unit} of ECG features")
    demographic_columns: dict[str, str] = Field(
        {}, description="CSV: {column: unit} of demographics")
    group_column: str | None = Field(None, description="CSV: subject id column (several "
                                                       "records per subject), or null")
    processes: int = Field(1, ge=1, description="worker processes for ECG feature extraction")


class VascularStatements(TaskConfig):
    """``tasks.vascular_age.statements`` (:func:`clinlm.vascular.statements.build_table`)."""

    #: chronological age in the statement; null: yes unless age is the target (PTB-XL)
    include_age: bool | None = None
    #: SBP/treatment/cholesterol/HDL/smoking/diabetes; null: whenever the columns exist
    include_risk_factors: bool | None = None


def _require(cfg: VascularDownload, key: str) -> Any:
    value = getattr(cfg, key)
    if value in (None, "", {}):
        raise ValueError(f"tasks.vascular_age.download.{key} is required for source "
                         f"{cfg.source!r} ({VascularDownload.model_fields[key].description})")
    return value


def _load_user_csv(cfg: VascularDownload, path: str | os.PathLike) -> pd.DataFrame:
    """:func:`~clinlm.vascular.csvsource.load_csv` with the column settings of ``cfg``."""
    from clinlm.vascular.csvsource import load_csv

    if not cfg.ecg_columns and not cfg.demographic_columns:
        raise ValueError("tasks.vascular_age.download.ecg_columns / demographic_columns are "
                         "empty: map the CSV's columns to units, e.g. {QTc: ms, Age: years}")
    return load_csv(path, cfg.id_column, cfg.csv_target_column, dict(cfg.ecg_columns),
                    dict(cfg.demographic_columns), cfg.group_column)


def _write_signals(out_dir: Path, signals: np.ndarray, fs: float) -> dict[str, Any]:
    from clinlm.vascular.ecg import LEADS

    signals = np.ascontiguousarray(signals, dtype=np.float32)
    with atomic_path(out_dir / SIGNALS) as tmp, open(tmp, "wb") as f:
        np.save(f, signals)
    meta = {"fs": float(fs), "leads": list(LEADS), "units": "mV", "shape": list(signals.shape)}
    write_json(out_dir / SIGNALS_META, meta)
    return meta


def _target_column(raw: pd.DataFrame) -> str:
    """The column holding the target: ``target`` (PTB-XL) or ``vascular_age``."""
    if raw.attrs.get("source") == "ptbxl" or ("target" in raw.columns
                                              and "vascular_age" not in raw.columns):
        return "target"
    return "vascular_age"


class VascularAgeTask(Task):
    """ECG features + demographics (+ risk factors) -> vascular age in years (regression)."""

    name: ClassVar[str] = "vascular_age"
    download_config: ClassVar[type[TaskConfig]] = VascularDownload
    statements_config: ClassVar[type[TaskConfig]] = VascularStatements

    def download(self, cfg: Mapping[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
        """Generate or read the vascular-age raw data into ``out_dir`` (files: module docstring).

        Args:
            cfg: the ``tasks.vascular_age`` section; its ``download`` keys:
                :class:`VascularDownload`.
            seed: the global seed (synthetic cohort).
            out_dir: the raw folder.

        Returns:
            Facts for ``download.json``: ``data_source``, ``n_rows``, ``n_subjects``,
            ``target_column``, ``seconds``; synthetic: ``noise_sd``, ``noise_floor_mae`` (the
            MAE of a perfect model, :func:`~clinlm.vascular.synthetic.noise_floor_mae`);
            PTB-XL: ``n_dropped_missing_target``; with signals: ``fs``, ``n_samples``; with
            extracted features: ``ecg_features_missing`` (NaN count per feature).
        """
        dl: VascularDownload = self.download_settings(cfg)
        source = dl.source
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info: dict[str, Any] = {"data_source": source}
        signals, fs = None, None
        if source == "synthetic":
            from clinlm.vascular.synthetic import generate_cohort, noise_floor_mae

            table, signals, fs = generate_cohort(n=dl.n_synthetic, seed=seed,
                                                 noise_sd=dl.noise_sd, processes=dl.processes)
            table.attrs.update(source="synthetic", target_column="vascular_age")
            info.update(noise_sd=dl.noise_sd,
                        noise_floor_mae=round(noise_floor_mae(dl.noise_sd), 4))
        elif source == "ptbxl":
            from clinlm.vascular.ecg import add_features
            from clinlm.vascular.ptbxl import load_ptbxl

            folder = Path(_require(dl, "ptbxl_dir"))
            table, signals, fs = load_ptbxl(folder, target_column=dl.target_column,
                                            max_records=dl.max_records,
                                            sampling_rate=dl.sampling_rate)
            table = add_features(table, signals, fs, processes=dl.processes)
            info.update(ptbxl_dir=str(folder), ptbxl_target_column=dl.target_column,
                        n_dropped_missing_target=int(
                            table.attrs.get("n_dropped_missing_target", 0)))
        else:
            table = _load_user_csv(dl, _require(dl, "csv_path"))
            info["csv_path"] = str(dl.csv_path)
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
        # the time is logged, not written: download.json is a cached output
        log.info("vascular_age: %d rows from %s in %.1f s", len(table), source,
                 time.perf_counter() - t0)
        return info

    def build_table(self, cfg: Mapping[str, Any], raw_dir: Path) -> pd.DataFrame:
        """``id, group, statement, label, f_*`` from ``raw_dir/subjects.parquet``.

        ``cfg["statements"]``: :class:`VascularStatements` (by default age is left out when
        it is the target, as on PTB-XL; :func:`clinlm.vascular.statements.build_table`).
        """
        from clinlm.vascular.statements import build_table as statements_table

        opts = self.statement_settings(cfg).model_dump()
        path = Path(raw_dir) / SUBJECTS
        if not path.is_file():
            raise DataError(path, "raw vascular table not found (run the download stage first)")
        raw = pd.read_parquet(path)
        return statements_table(raw, _target_column(raw), **opts)

    def table_from_raw_csv(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """A user's CSV (columns as in ``cfg["download"]``'s CSV settings) -> statements table.

        The target column may be absent (new patients to predict): the table's ``label`` is
        then NaN. Errors name the user's file, row and column.
        """
        from clinlm.vascular.statements import build_table as statements_table

        dl: VascularDownload = self.download_settings(cfg)
        opts = self.statement_settings(cfg).model_dump()
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "file not found")
        header = pd.read_csv(path, nrows=0).columns
        if dl.csv_target_column in header:
            return statements_table(_load_user_csv(dl, path), "vascular_age", **opts)
        # unlabeled: validate a copy with a placeholder target, report errors on the user's file
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame[dl.csv_target_column] = "0"
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            frame.to_csv(copy, index=False)
            try:
                raw = _load_user_csv(dl, copy)
            except DataError as e:
                prefix = str(DataError(copy, "", e.row, e.column))  # "<copy>, row r, column 'c': "
                raise DataError(path, str(e).removeprefix(prefix), e.row, e.column) from e
        table = statements_table(raw, "vascular_age", **opts)
        table["label"] = np.nan
        return table


def render_images(raw_dir: Path, out_dir: Path, width_px: int, height_px: int) -> dict[str, Any]:
    """Render every recording of ``raw_dir`` as ``out_dir/<id>.png`` (ECG paper, 12 leads).

    A source without recordings (``csv``: features only) renders nothing: the folder stays
    empty, the stage says so and does not fail (a vlm run on such data fails at its own stage,
    naming the missing pictures). Returns ``{"n_images", "width_px", "height_px"}`` (+
    ``"skipped"``); the rendering time is logged, not written into the cached output.
    """
    from clinlm.vascular.render import render_many

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    sig_path = raw_dir / SIGNALS
    if not sig_path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        reason = (f"{sig_path.name} absent: this source has features only, no ECG recordings "
                  "(images need source synthetic or ptbxl)")
        log.info("render: nothing to draw, %s", reason)
        return {"n_images": 0, "skipped": reason, "width_px": int(width_px),
                "height_px": int(height_px)}
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
    log.info("render: %d images in %.1f s", len(ids), seconds)
    return {"n_images": len(ids), "width_px": int(width_px), "height_px": int(height_px)}
