"""Download step of the no-show task: get the Kaggle "Medical Appointment No Shows" table.

Sources (``tasks.noshow.download.source``, keys and defaults: :class:`NoshowDownload`):

- ``kaggle``: the dataset ``joniarroba/noshowappointments`` through the official
  ``kagglehub`` client. Credentials are whatever kagglehub's own lookup finds
  (:func:`kaggle_credentials_origin`); they are never logged.
- ``csv``: a local ``.csv`` file, or a ``.zip`` holding one CSV (the Kaggle download).
- ``synthetic``: generated rows with the exact Kaggle schema and value formats
  (:func:`clinlm.noshow.synthetic.generate_synthetic`), so the pipeline runs without any
  download.
- ``auto``: ``kaggle`` when kagglehub finds credentials, otherwise ``synthetic``.

Whatever the source, the table is validated (:func:`clinlm.noshow.schema.validate`) and
written as a CSV in the Kaggle format: the same 14 columns in the same order, the same string
formats, UTF-8, ``\\n`` line ends. For the real Kaggle file the output is byte-for-byte the
input minus the dropped rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from clinlm.io import DataError, atomic_path, sha256_file
from clinlm.noshow.schema import read_raw, validate
from clinlm.noshow.synthetic import generate_synthetic
from clinlm.tasks import TaskConfig, parse_section

logger = logging.getLogger(__name__)

KAGGLE_DATASET = "joniarroba/noshowappointments"
#: Name of the CSV inside the Kaggle dataset.
KAGGLE_CSV_NAME = "KaggleV2-May-2016.csv"
SOURCES: tuple[str, ...] = ("auto", "kaggle", "csv", "synthetic")
DEFAULT_N_SYNTHETIC = 20_000


class NoshowDownload(TaskConfig):
    """``tasks.noshow.download``: the one home of its keys and defaults (``null`` = default)."""

    #: ``auto|kaggle|csv|synthetic`` (case-insensitive); auto: kaggle if credentials
    source: Literal["auto", "kaggle", "csv", "synthetic"] = "auto"
    #: source csv: a ``.csv`` or a ``.zip`` holding one CSV
    csv_path: str | None = None
    #: source csv: the separator (null: sniffed among , ; tab |)
    csv_separator: str | None = None
    #: source csv: the text encoding (cp1252 / latin-1 for files saved by Excel on Windows)
    csv_encoding: str = "utf-8"
    #: source synthetic: number of rows
    n_synthetic: int = Field(DEFAULT_N_SYNTHETIC, ge=1)
    #: source kaggle: the dataset handle
    kaggle_dataset: str = KAGGLE_DATASET

    @field_validator("source", mode="before")
    @classmethod
    def _known_source(cls, value: Any) -> str:
        name = str(value).strip().lower()
        if name not in SOURCES:
            raise ValueError(f"unknown data source {value!r}; expected one of {list(SOURCES)}")
        return name


# --------------------------------------------------------------------------------------
# Source selection and Kaggle download
# --------------------------------------------------------------------------------------


def kaggle_credentials_origin() -> str | None:
    """Where kagglehub's own lookup finds Kaggle credentials; ``None`` when it finds none.

    The decision is ``kagglehub.config.get_kaggle_credentials()`` (kagglehub 1.0: an access
    token from ``KAGGLE_API_TOKEN`` -- the token or a file holding it --, the Kaggle
    notebook token file, ``~/.kaggle/access_token[.txt]``; then ``KAGGLE_USERNAME`` with
    ``KAGGLE_KEY``; then ``kaggle.json`` in ``KAGGLE_CONFIG_DIR`` or ``~/.kaggle``; then
    Colab secrets). It reads the current ``os.environ``. The result describes the origin (a
    variable or file name), never the secret. A ``kaggle.json`` that kagglehub rejects (not
    JSON, no ``username``/``key``) is logged and counts as no credentials.
    """
    try:
        from kagglehub.config import get_kaggle_credentials
        from kagglesdk.kaggle_env import get_access_token_from_env
    except ImportError:
        logger.warning("kagglehub is not installed: no Kaggle credentials can be used")
        return None
    try:
        creds = get_kaggle_credentials()
    except ValueError as e:  # kaggle.json unreadable or incomplete; the message has no secret
        logger.warning("ignoring Kaggle credentials: %s", e)
        return None
    if creds is None:
        return None
    if creds.api_key:
        _, where = get_access_token_from_env()
        return {"KAGGLE_API_TOKEN": "KAGGLE_API_TOKEN (the token or a file holding it)",
                "access_token": "token file ~/.kaggle/access_token",
                }.get(str(where), f"access token ({where or 'kagglehub'})")
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    return "credentials file kaggle.json (KAGGLE_CONFIG_DIR or ~/.kaggle)"


def resolve_source(source: str) -> str:
    """Resolve ``auto|kaggle|csv|synthetic`` to a concrete source and log the choice.

    ``auto`` becomes ``kaggle`` when :func:`kaggle_credentials_origin` finds credentials,
    else ``synthetic``. Raises ``ValueError`` for any other value.
    """
    name = str(source).strip().lower()
    if name not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {list(SOURCES)}")
    if name != "auto":
        logger.info("data source: %s (configured)", name)
        return name
    origin = kaggle_credentials_origin()
    if origin is not None:
        logger.info("data source 'auto' -> kaggle: Kaggle credentials found (%s)", origin)
        return "kaggle"
    logger.info("data source 'auto' -> synthetic: no Kaggle credentials found (set "
                "KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, or create "
                "~/.kaggle/access_token or ~/.kaggle/kaggle.json)")
    return "synthetic"


@contextmanager
def _kagglehub_cache(cache_dir: Path | None) -> Iterator[None]:
    """Point kagglehub's cache (``KAGGLEHUB_CACHE``, read per call) at ``cache_dir`` for a while."""
    if cache_dir is None:
        yield
        return
    old = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(cache_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = old


def download_kaggle(dataset: str, cache_dir: Path | None = None) -> Path:
    """Download ``dataset`` with ``kagglehub.dataset_download``; return the CSV inside.

    kagglehub keeps its own cache (``KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``);
    ``cache_dir`` overrides it for this call. Credentials are whatever kagglehub finds in
    the environment or Kaggle's files; they are neither passed nor logged here. With several
    CSVs in the dataset, :data:`KAGGLE_CSV_NAME` is taken, else it is an error.
    """
    import kagglehub  # imported lazily: only this source needs it

    if kaggle_credentials_origin() is None:
        logger.warning("no Kaggle credentials found; trying %s without authentication", dataset)
    with _kagglehub_cache(cache_dir):
        folder = Path(kagglehub.dataset_download(dataset))
    logger.info("kagglehub: %s is at %s", dataset, folder)
    if folder.is_file():
        return folder
    csvs = sorted(folder.rglob("*.csv"))
    named = [p for p in csvs if p.name == KAGGLE_CSV_NAME]
    if len(named) == 1:
        return named[0]
    if len(csvs) == 1:
        return csvs[0]
    raise DataError(folder, f"expected one CSV in the Kaggle dataset {dataset}, found "
                            f"{[str(p.relative_to(folder)) for p in csvs]}")


def download(cfg: NoshowDownload | Mapping[str, Any], seed: int,
             out_csv: str | os.PathLike) -> dict[str, Any]:
    """Fetch the table from the configured source, validate it, write it in Kaggle format.

    ``cfg``: ``tasks.noshow.download`` (keys and defaults: :class:`NoshowDownload`; a
    mapping is validated, an unknown key or source is a ``ValueError``). ``seed`` only
    drives the synthetic generator.

    The CSV is written atomically: on any error nothing (not even a partial file) is left
    at ``out_csv``. Returns ``{"data_source", "n_rows", "n_dropped_negative_age",
    "n_scheduled_after_appointment", "sha256"}`` where ``data_source`` is the resolved
    source and ``sha256`` the hex digest of the written file.
    """
    settings = parse_section(NoshowDownload, cfg, "tasks.noshow.download")
    source = resolve_source(settings.source)
    if source == "synthetic":
        raw = generate_synthetic(settings.n_synthetic, seed)
        where: str | Path = f"<synthetic n_rows={settings.n_synthetic} seed={seed}>"
    elif source == "csv":
        if not settings.csv_path:
            raise ValueError("data source 'csv' needs cfg['csv_path'] (a .csv or a .zip "
                             "holding one CSV)")
        where = Path(settings.csv_path)
        if not where.is_file():
            raise FileNotFoundError(f"csv_path {str(where)!r} (data source 'csv') does not "
                                    "exist or is not a file")
        raw = read_raw(where, settings.csv_separator, settings.csv_encoding)
    else:
        where = download_kaggle(settings.kaggle_dataset or KAGGLE_DATASET)
        raw = read_raw(where)

    df, counts = validate(raw, where)
    if df.empty:  # e.g. a header-only file: nothing to split, train or evaluate
        raise DataError(where, f"no usable rows ({len(raw)} data row(s) read, "
                               f"{counts.get('n_dropped_negative_age', 0)} dropped)")
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    info = {
        "data_source": source,
        "n_rows": counts["n_rows"],
        "n_dropped_negative_age": counts["n_dropped_negative_age"],
        "n_scheduled_after_appointment": counts["n_scheduled_after_appointment"],
        "sha256": sha256_file(out_csv),
    }
    logger.info("wrote %s: %d rows from %s (%s)", out_csv, info["n_rows"], source, where)
    return info

