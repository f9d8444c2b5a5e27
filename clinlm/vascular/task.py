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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from clinlm.io import DataError, atomic_path, read_parquet, write_json, write_parquet
from clinlm.tasks import CsvReading, Task, TaskConfig
from clinlm.vascular.csvsource import CsvColumn, CsvOptions

log = logging.getLogger(__name__)

SUBJECTS, SIGNALS, SIGNALS_META = "subjects.parquet", "signals.npy", "signals.json"
#: the id column a user's rows get when they carry none: the 1-based row number of the input
#: (kept through validation, so a refused row never renumbers the others)
ROW_ID = "_clinlm_row"


class VascularDownload(CsvReading):
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
    csv_path: str | None = Field(None, description="a table of ECG features + demographics + "
                                                   "a measured target (any separator)")
    id_column: str | None = Field(None, description="CSV: unique record id column (null: the "
                                                    "row number)")
    csv_target_column: str = Field("vascular_age", min_length=1,
                                   description="CSV: the target column (years)")
    group_column: str | None = Field(None, description="CSV: subject id column (several "
                                                       "records per subject), or null")
    columns: dict[str, CsvColumn] = Field(
        {}, description="CSV: {column: {feature, unit, kind, codes, range, label, decimals, "
                        "section}}: what each column is (clinlm.vascular.csvsource)")
    max_categories: int = Field(20, ge=1, description="CSV: one-hot features per category "
                                                      "column (the most frequent values)")
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


def csv_options(cfg: VascularDownload) -> CsvOptions:
    """The csv keys of ``cfg`` as :class:`~clinlm.vascular.csvsource.CsvOptions`."""
    return CsvOptions(columns=cfg.columns, id_column=cfg.id_column,
                      target_column=cfg.csv_target_column, group_column=cfg.group_column,
                      separator=cfg.csv_separator, encoding=cfg.csv_encoding,
                      missing_values=cfg.missing_values, max_categories=cfg.max_categories)


def _load_user_csv(cfg: VascularDownload, path: str | os.PathLike) -> pd.DataFrame:
    """:func:`~clinlm.vascular.csvsource.load_csv` with the column settings of ``cfg``."""
    from clinlm.vascular.csvsource import load_csv

    return load_csv(path, csv_options(cfg))


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

    name = "vascular_age"
    task_types: ClassVar[tuple[str, ...]] = ("regression",)
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
            info.update(csv_path=str(dl.csv_path), features=table.attrs["features"],
                        id_from_row_number=table.attrs["id_from_row_number"])
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

    def input_files(self, cfg: Mapping[str, Any]) -> list[Path]:
        """Source csv: the table; ptbxl: the database CSV and the records of the sampling rate
        read (sorted); synthetic: none."""
        dl: VascularDownload = self.download_settings(cfg)
        if dl.source == "csv" and dl.csv_path:
            return [Path(dl.csv_path)]
        if dl.source == "ptbxl" and dl.ptbxl_dir:
            root = Path(dl.ptbxl_dir)
            records = root / f"records{dl.sampling_rate}"
            files = sorted(p for p in records.rglob("*") if p.is_file()) if records.is_dir() else []
            return [root / "ptbxl_database.csv", *files]
        return []

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
        raw = read_parquet(path)
        return statements_table(raw, _target_column(raw), **opts)

    def table_from_raw_csv(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """A user's table (read like the download's csv source) -> statements table.

        With source ``csv`` the columns are the user's (``download.columns``); otherwise the
        canonical field names of :meth:`input_fields`. The target column may be absent (new
        patients to predict): ``label`` is then NaN. Errors name the user's file, row, column
        (all or nothing; ``clinlm predict`` answers the good rows: :meth:`screen_csv`).
        """
        return self.frame_table(cfg, self.csv_frame(cfg, path), path)

    def input_fields(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The fields one subject is described by (``ask``, the page's form).

        Source ``csv``: the user's mapped columns; other sources: the canonical names of the
        data the statements use (``age``, ``sex``, ``height_cm``, ..., ``qtc_ms``, ...).
        """
        from clinlm.vascular.csvsource import resolve

        out = []
        for f in resolve(self._record_options(cfg).columns):
            kind = {"number": "number", "sex": "choice", "bool": "bool",
                    "category": "text"}[f.kind]
            help_ = f.label or _HELP.get(f.name, f.name)
            out.append({"name": f.column, "label": help_[:1].upper() + help_[1:],
                        "kind": kind, "unit": _UNITS.get(f.source_unit or "", f.source_unit)
                        or None, "choices": ["M", "F"] if f.kind == "sex" else
                        (["yes", "no"] if f.kind == "bool" else None),
                        "required": False, "example": _EXAMPLES.get(f.name),
                        "help": help_})
        return out

    def records_frame(self, cfg: Mapping[str, Any], records: list[dict[str, Any]],
                      source: str) -> tuple[pd.DataFrame, dict[int, tuple[str | None, str]]]:
        """Subjects given as ``{field: value}`` -> the mapped columns' cells (+ the record's
        number as its id); a record with no field given is refused."""
        known = list(self._record_options(cfg).columns)
        refused = {i: (None, "no field given") for i, rec in enumerate(records, 1)
                   if all(rec.get(k) in (None, "") for k in known)}
        raw = pd.DataFrame([{k: "" if rec.get(k) is None else str(rec.get(k)) for k in known}
                            for rec in records], columns=known)
        raw[ROW_ID] = [str(i) for i in range(1, len(records) + 1)]
        return raw, refused

    def csv_frame(self, cfg: Mapping[str, Any], path: Path) -> pd.DataFrame:
        """The cells of a user's table (the csv source's separator / encoding / markers); a
        table without its id column gets the data line number as the id."""
        from clinlm.io import read_table

        opts = self._record_options(cfg)
        raw = read_table(path, opts.separator, opts.encoding, opts.key_prefix)
        if self._id_column(cfg, raw) is None:
            raw[ROW_ID] = np.arange(1, len(raw) + 1).astype(str)
        return raw

    def frame_table(self, cfg: Mapping[str, Any], raw: pd.DataFrame,
                    source: str | Path, *, from_records: bool = False) -> pd.DataFrame:
        """The csv source's validation (:func:`~clinlm.vascular.csvsource.parse_frame`; every
        bad cell listed), then the statements; the target column may be absent. Fields a person
        left empty (``from_records``) are said as "not recorded"; a CSV's statements are the
        csv source's own, so a row predicted from a file reads as it did in training."""
        from clinlm.vascular.csvsource import parse_frame

        dl: VascularDownload = self.download_settings(cfg)
        group = dl.group_column if dl.source == "csv" and dl.group_column in raw.columns else None
        opts = self._record_options(cfg).model_copy(update={
            "id_column": self._id_column(cfg, raw) or (ROW_ID if ROW_ID in raw.columns else None),
            "group_column": group})
        return self._statements(cfg, parse_frame(raw, opts, source, require_target=False),
                               say_unrecorded=from_records)

    def frame_ids(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> list[str | None]:
        """The file's id column (source ``csv`` with ``id_column``), else the row number."""
        col = self._id_column(cfg, raw) or ROW_ID
        if col not in raw.columns:
            return [None] * len(raw)
        return [str(v).strip() or None for v in raw[col].fillna("")]

    def _id_column(self, cfg: Mapping[str, Any], raw: pd.DataFrame) -> str | None:
        """The csv source's ``id_column`` when this table has it."""
        dl: VascularDownload = self.download_settings(cfg)
        if dl.source == "csv" and dl.id_column and dl.id_column in raw.columns:
            return dl.id_column
        return None

    def _record_options(self, cfg: Mapping[str, Any]) -> CsvOptions:
        """How a user's rows are read: the csv mapping, or the canonical fields."""
        dl: VascularDownload = self.download_settings(cfg)
        if dl.source == "csv":
            return csv_options(dl).model_copy(update={"id_column": None, "group_column": None})
        from clinlm.vascular.csvsource import KNOWN

        risk = dl.source == "synthetic"
        target_is_age = dl.source == "ptbxl" and dl.target_column == "age"
        cols = {}
        for feat, (name, _unit, _kind, section) in KNOWN.items():
            if (section == "risk" and not risk) or (feat == "age" and target_is_age):
                continue
            if feat == "bmi":  # computed from height and weight
                continue
            cols[name] = CsvColumn(feature=feat)
        return CsvOptions(columns=cols, target_column="vascular_age")

    def _statements(self, cfg: Mapping[str, Any], raw: pd.DataFrame,
                    say_unrecorded: bool = False) -> pd.DataFrame:
        from clinlm.vascular.statements import build_table as statements_table

        return statements_table(raw, "vascular_age", say_unrecorded=say_unrecorded,
                                **self.statement_settings(cfg).model_dump())


#: what a canonical field is, for the form (``input_fields``)
_HELP: dict[str, str] = {
    "age": "age", "sex": "sex", "height_cm": "height", "weight_kg": "weight",
    "sbp_mmhg": "systolic blood pressure", "bp_treated": "blood pressure treated",
    "total_chol_mgdl": "total cholesterol", "hdl_mgdl": "HDL cholesterol", "smoker": "smoker",
    "diabetes": "diabetes", "hr_bpm": "heart rate", "pr_ms": "PR interval",
    "qrs_ms": "QRS duration", "qt_ms": "QT interval", "qtc_ms": "QTc (corrected QT)",
    "p_axis_deg": "P axis", "qrs_axis_deg": "QRS axis", "t_axis_deg": "T axis",
    "sdnn_ms": "SDNN (heart-rate variability)", "rmssd_ms": "RMSSD (heart-rate variability)",
}
#: units as a reader writes them (the form, ``ask --list-fields``)
_UNITS: dict[str, str] = {"deg": "°", "1": ""}
#: example values for the form (``input_fields``), by stored column
_EXAMPLES: dict[str, Any] = {
    "age": 58, "sex": "M", "height_cm": 176, "weight_kg": 82, "sbp_mmhg": 135,
    "bp_treated": "no", "total_chol_mgdl": 210, "hdl_mgdl": 48, "smoker": "no",
    "diabetes": "no", "hr_bpm": 68, "pr_ms": 160, "qrs_ms": 94, "qt_ms": 398, "qtc_ms": 421,
    "p_axis_deg": 50, "qrs_axis_deg": 35, "t_axis_deg": 40, "sdnn_ms": 42, "rmssd_ms": 31,
}


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
    ids = read_parquet(raw_dir / SUBJECTS, columns=["id"])["id"].astype(str).tolist()
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
