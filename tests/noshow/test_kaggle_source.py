"""No-show ``kaggle`` source: kagglehub's own credential lookup decides, and the download
goes through kagglehub against a local fake Kaggle API (tests/fake_kaggle.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from clinlm.noshow.sources import (
    KAGGLE_CSV_NAME,
    KAGGLE_DATASET,
    download,
    download_kaggle,
    kaggle_credentials_origin,
    resolve_source,
)
from clinlm.noshow.synthetic import generate_synthetic

try:
    from fake_kaggle import FakeKaggle
except ImportError:  # tests/ imported as a package
    from tests.fake_kaggle import FakeKaggle

# Fake test credentials for the local fake Kaggle server; never real ones.
TEST_USER, TEST_KEY, TEST_TOKEN = "clinlm-test-user", "fake-test-key-0123", "KGAT_fake_test_token"
KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE",
               "KAGGLE_DATA_PROXY_URL", "KAGGLE_API_V1_TOKEN")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


# ---------------------------------------------------------------------------- credentials


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Kaggle variables; HOME and KAGGLE_CONFIG_DIR at an empty ``tmp_path/.kaggle``."""
    pytest.importorskip("kagglehub")
    kaggle_dir = tmp_path / ".kaggle"
    kaggle_dir.mkdir()
    for var in KAGGLE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(kaggle_dir))
    monkeypatch.setattr("kagglehub.config._kaggle_credentials", None)  # no kagglehub.login()
    return kaggle_dir


CREDENTIAL_CASES = {
    "none": ({}, {}, None),
    "username+key": ({"KAGGLE_USERNAME": TEST_USER, "KAGGLE_KEY": TEST_KEY}, {},
                     "KAGGLE_USERNAME and KAGGLE_KEY"),
    "username only": ({"KAGGLE_USERNAME": TEST_USER}, {}, None),
    "api token": ({"KAGGLE_API_TOKEN": TEST_TOKEN}, {}, "KAGGLE_API_TOKEN"),
    "access_token file": ({}, {"access_token": TEST_TOKEN}, "access_token"),
    "empty access_token": ({}, {"access_token": "\n"}, None),
    "kaggle.json": ({}, {"kaggle.json": json.dumps({"username": TEST_USER, "key": TEST_KEY})},
                    "kaggle.json"),
}


@pytest.mark.parametrize("case", list(CREDENTIAL_CASES))
def test_kagglehub_lookup_decides(case: str, bare_home: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kagglehub.config import get_kaggle_credentials

    env_vars, files, origin = CREDENTIAL_CASES[case]
    for name, text in files.items():
        (bare_home / name).write_text(text)
    for var, value in env_vars.items():
        monkeypatch.setenv(var, value)
    found = kaggle_credentials_origin()
    assert (found is not None) is (origin is not None)
    assert (get_kaggle_credentials() is not None) is (found is not None)  # kagglehub's word
    if origin is not None:
        assert origin in found and TEST_KEY not in found and TEST_TOKEN not in found


def test_lookup_follows_kagglehub_not_a_copy(bare_home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import kagglehub.config

    assert kaggle_credentials_origin() is None
    found = kagglehub.config.KaggleApiCredentials(username="someone", key="k")
    monkeypatch.setattr(kagglehub.config, "get_kaggle_credentials", lambda: found)
    assert kaggle_credentials_origin() is not None


@pytest.mark.parametrize("content", ["{not json", json.dumps({"username": TEST_USER})])
def test_rejected_kaggle_json_counts_as_none(content: str, bare_home: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    (bare_home / "kaggle.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="clinlm"):
        assert kaggle_credentials_origin() is None
        assert resolve_source("auto") == "synthetic"
    assert "ignoring Kaggle credentials" in caplog.text and "kaggle.json" in caplog.text


def test_resolve_source(bare_home: Path, monkeypatch: pytest.MonkeyPatch,
                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="clinlm"):
        assert resolve_source("auto") == "synthetic"
        assert "no Kaggle credentials" in caplog.text
        monkeypatch.setenv("KAGGLE_USERNAME", TEST_USER)
        monkeypatch.setenv("KAGGLE_KEY", TEST_KEY)
        assert resolve_source("auto") == "kaggle"
        monkeypatch.delenv("KAGGLE_USERNAME")
        monkeypatch.delenv("KAGGLE_KEY")
        monkeypatch.setenv("KAGGLE_API_TOKEN", TEST_TOKEN)
        assert resolve_source("AUTO") == "kaggle"
        for name in ("kaggle", "csv", "synthetic"):
            assert resolve_source(name) == name
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in caplog.text
    assert TEST_KEY not in caplog.text and TEST_TOKEN not in caplog.text
    with pytest.raises(ValueError, match="unknown data source"):
        resolve_source("bogus")


# ---------------------------------------------------------------------------- kaggle source


@pytest.fixture
def kaggle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kagglehub pointed at http://localhost:7777, with an empty home and a temp cache."""
    pytest.importorskip("kagglehub")
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE",
                "KAGGLE_DATA_PROXY_URL", "TBE_RUNTIME_ADDR", "DISABLE_KAGGLE_CACHE",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    return tmp_path


@pytest.fixture
def fake_kaggle(kaggle_env: Path) -> Iterator[tuple[FakeKaggle, bytes]]:
    try:
        server = FakeKaggle(username=TEST_USER, key=TEST_KEY, api_token=TEST_TOKEN)
    except OSError as e:
        pytest.skip(f"port 7777 on 127.0.0.1 is busy ({e}); kagglehub's TEST environment "
                    "always talks to http://localhost:7777")
    served = _csv_bytes(generate_synthetic(300, seed=11))
    server.add_dataset(KAGGLE_DATASET, {KAGGLE_CSV_NAME: served}, version=2)
    with server:
        yield server, served


API = "/api/v1/datasets.DatasetApiService/"


@pytest.mark.parametrize(("auth", "source"), [("username+key", "kaggle"), ("token", "auto")])
def test_kaggle_source_via_kagglehub(auth: str, source: str, kaggle_env: Path,
                                     fake_kaggle: tuple[FakeKaggle, bytes],
                                     monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    server, served = fake_kaggle
    if auth == "token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", TEST_TOKEN)
    else:
        monkeypatch.setenv("KAGGLE_USERNAME", TEST_USER)
        monkeypatch.setenv("KAGGLE_KEY", TEST_KEY)
    out = kaggle_env / "out" / "raw.csv"
    cfg = {"source": source, "kaggle_dataset": KAGGLE_DATASET}
    with caplog.at_level(logging.DEBUG, logger="clinlm"):
        info = download(cfg, seed=0, out_csv=out)
    assert out.read_bytes() == served
    assert info == {"data_source": "kaggle", "n_rows": 300, "n_dropped_negative_age": 0,
                    "n_scheduled_after_appointment": 0, "sha256": _sha256(served)}
    assert server.paths() == [f"POST {API}GetDataset", f"POST {API}DownloadDataset",
                              "GET /storage/joniarroba/noshowappointments/2/archive.zip"]
    get, dl = server.requests[:2]
    assert get.authorized and dl.authorized
    assert get.body == {"ownerSlug": "joniarroba", "datasetSlug": "noshowappointments"}
    assert dl.body is not None and dl.body["datasetVersionNumber"] == 2
    cached = kaggle_env / "cache/datasets/joniarroba/noshowappointments/versions/2"
    assert (cached / KAGGLE_CSV_NAME).read_bytes() == served
    assert TEST_KEY not in caplog.text and TEST_TOKEN not in caplog.text
    # second run: kagglehub asks for the current version only, the archive comes from cache
    assert download(cfg, seed=0, out_csv=out) == info
    assert server.paths()[3:] == [f"POST {API}GetDataset"]


def test_kaggle_failures_leave_no_output(kaggle_env: Path,
                                         fake_kaggle: tuple[FakeKaggle, bytes],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = fake_kaggle
    out_dir = kaggle_env / "out"
    out_dir.mkdir()
    cfg = {"source": "kaggle"}
    monkeypatch.setenv("KAGGLE_USERNAME", TEST_USER)
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key")
    with pytest.raises(Exception, match="401"):
        download(cfg, seed=0, out_csv=out_dir / "raw.csv")
    assert not server.requests[0].authorized
    monkeypatch.setenv("KAGGLE_KEY", TEST_KEY)
    server.corrupt_md5 = True
    with pytest.raises(Exception, match="MD5|md5|checksum"):
        download(cfg, seed=0, out_csv=out_dir / "raw.csv")
    with pytest.raises(Exception, match="404"):
        download({"source": "kaggle", "kaggle_dataset": "someone/missing"}, 0,
                 out_dir / "raw.csv")
    assert list(out_dir.iterdir()) == []


def test_download_kaggle_cache_dir(kaggle_env: Path, fake_kaggle: tuple[FakeKaggle, bytes],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, served = fake_kaggle
    monkeypatch.setenv("KAGGLE_API_TOKEN", TEST_TOKEN)
    path = download_kaggle(KAGGLE_DATASET, cache_dir=kaggle_env / "other")
    assert path == (kaggle_env / "other/datasets/joniarroba/noshowappointments/versions/2"
                    / KAGGLE_CSV_NAME)
    assert path.read_bytes() == served
    assert os.environ["KAGGLEHUB_CACHE"] == str(kaggle_env / "cache")  # restored
