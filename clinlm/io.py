"""Small I/O helpers: atomic writes and input errors that name file, row and column."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data. The message names the file, and the row and column when known.

    ``cells``: every bad cell the check found, as ``(1-based row, column, rule)`` (by default
    the one named); the prediction paths refuse exactly those rows and answer the others
    (:func:`clinlm.tasks.screen_frame`).
    """

    def __init__(self, path: str | os.PathLike, message: str, row: int | None = None,
                 column: str | None = None,
                 cells: list[tuple[int, str | None, str]] | None = None) -> None:
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.column = str(path), row, column
        self.cells = cells if cells is not None else (
            [(row, column, message)] if row is not None else [])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _shareable(path: Path, directory: bool = False) -> None:
    """Give a temp file / folder the mode a plain ``open`` / ``mkdir`` would have (mkstemp and
    mkdtemp make them private, 0600 / 0700): teammates sharing a DVC cache or a results
    folder must be able to read them; the umask still decides."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left at ``path``: on any exception the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            _shareable(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only on success.

    For model folders: a failed save leaves the previous folder (or nothing) at ``path``.
    Every file and folder in it gets the mode the umask gives (a library that writes through
    its own private temp files, as safetensors did with ``model.safetensors``, left 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if not p.is_symlink():
                _shareable(p, directory=p.is_dir())
        _shareable(tmp, directory=True)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf become ``null`` (strict JSON, which
    ``dvc metrics`` and other readers parse)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(obj), indent=2, sort_keys=False,
                                  default=_json_default, allow_nan=False) + "\n")


def _strict(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:  # numpy scalar
        return _strict(o.item())
    return o


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV without the index, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet, atomically, on this thread.

    The bytes are pandas' ``df.to_parquet(path, index=False)``; the conversion runs on one
    thread so Arrow's thread pool is never started: a pool alive at interpreter exit can abort
    the process after its work is done ("terminate called without an active exception",
    apache/arrow#34314), which fails a stage that succeeded. The tables are small.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
    if df.attrs:  # as pandas keeps them
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               "PANDAS_ATTRS": json.dumps(df.attrs)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="snappy")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file as a DataFrame, read on this thread (see :func:`write_parquet`)."""
    return pd.read_parquet(path, columns=columns, use_threads=False)


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_table(path: str | os.PathLike, separator: str | None = None, encoding: str = "utf-8",
               key_prefix: str = "tasks.<task>.download", data: bytes | None = None,
               ) -> pd.DataFrame:
    """Every cell of a delimited text table as a stripped string (header row first).

    ``separator`` null: sniffed among ``, ; tab |`` (logged). ``data``: the bytes, when they
    do not come from ``path`` (a zip member). Errors: not decodable (says which key to set,
    and whether the bytes read as Latin-1 / Windows-1252), not parseable, no data rows.
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise DataError(path, "file not found")
        data = path.read_bytes()
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(enc)
    except LookupError as e:
        raise DataError(path, f"unknown encoding {encoding!r} ({key_prefix}.csv_encoding)") from e
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        hint = ""
        try:
            data.decode("cp1252")
            hint = (" It reads as Windows-1252 / Latin-1 (files saved by Excel on Windows): "
                    f"set {key_prefix}.csv_encoding: cp1252 (or latin-1).")
        except UnicodeDecodeError:
            pass
        raise DataError(path, f"not valid {encoding} text: byte {data[e.start:e.start + 1]!r} "
                              f"at line {line}.{hint or f' Set {key_prefix}.csv_encoding.'}",
                        row=max(line - 1, 0) or None) from e
    if separator is None:
        separator = sniff_separator(text)
        log.info("%s: separator %r (sniffed; set %s.csv_separator to force one)", path,
                 separator, key_prefix)
    try:
        raw = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False,
                          na_filter=False, skipinitialspace=True, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(path, f"not a readable table with separator {separator!r}: {e} "
                              f"(set {key_prefix}.csv_separator)") from e
    raw.columns = [str(c).strip() for c in raw.columns]
    if raw.empty:
        raise DataError(path, f"no data rows (header only: {list(raw.columns)[:10]})")
    return raw.apply(lambda s: s.str.strip())


def sniff_separator(text: str) -> str:
    """The separator of a delimited table: csv.Sniffer on the first lines, else the most
    frequent of ``, ; tab |`` in the header."""
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        header = text.splitlines()[0] if text else ""
        return max(",;\t|", key=header.count)
