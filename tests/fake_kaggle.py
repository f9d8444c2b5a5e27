"""A local fake of the Kaggle API, enough for ``kagglehub.dataset_download``.

kagglehub (>= 0.4, checked on 1.0.2 with kagglesdk 0.1.37) sends its API calls through
kagglesdk, which talks to ``http://localhost:7777`` when ``KAGGLE_API_ENVIRONMENT=TEST``
(``kagglesdk.kaggle_env``). Calls are ``POST {endpoint}/api/v1/{service}/{method}`` with a
JSON body (``KaggleHttpClient._get_request_url``). ``dataset_download(handle)`` makes:

1. ``POST /api/v1/datasets.DatasetApiService/GetDataset`` ``{"ownerSlug", "datasetSlug"}``
   -> JSON ``ApiDataset``; kagglehub reads ``currentVersionNumber`` (unversioned handles);
2. ``POST /api/v1/datasets.DatasetApiService/DownloadDataset``
   ``{"ownerSlug", "datasetSlug", "datasetVersionNumber"}`` -> in production a 302 to a
   signed storage URL; ``requests`` follows it with a GET. The archive is streamed to the
   cache, checked against the ``x-goog-hash: md5=<base64>`` header when present, and
   extracted (zip or tar). Only when the kagglehub cache already holds that version is this
   call skipped.

Auth is ``Authorization: Basic base64(username:key)`` for KAGGLE_USERNAME/KAGGLE_KEY or
kaggle.json, and ``Authorization: Bearer <token>`` for KAGGLE_API_TOKEN/access_token. API
errors are JSON ``{"code": 4xx, "message": ...}``. This server checks the header against the
credentials it was given (401 otherwise) and records every request for the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

API = "/api/v1/datasets.DatasetApiService/"
STORAGE = "/storage/"


@dataclass
class Request:
    """One request as the fake server saw it."""

    method: str
    path: str
    body: dict[str, Any] | None
    authorized: bool


@dataclass
class _Dataset:
    version: int
    archive: bytes
    md5_b64: str


@dataclass
class FakeKaggle:
    """Threaded HTTP server on ``host:port`` that mimics Kaggle's dataset download API.

    Use as a context manager. ``username``/``key`` enable Basic auth, ``api_token`` Bearer
    auth; with neither, any request is accepted. ``corrupt_md5`` sends a wrong checksum.
    Binding raises ``OSError`` when the port is taken.
    """

    host: str = "127.0.0.1"
    port: int = 7777
    username: str | None = None
    key: str | None = None
    api_token: str | None = None
    corrupt_md5: bool = False
    requests: list[Request] = field(default_factory=list)
    _datasets: dict[tuple[str, str], _Dataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._lock = threading.Lock()

    def add_dataset(self, handle: str, files: dict[str, bytes], version: int = 1) -> None:
        """Serve ``files`` (name -> content) zipped as ``owner/slug`` at ``version``."""
        owner, slug = handle.split("/")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in files.items():
                zf.writestr(name, content)
        archive = buf.getvalue()
        md5 = base64.b64encode(hashlib.md5(archive).digest()).decode()
        self._datasets[(owner, slug)] = _Dataset(version, archive, md5)

    def expected_auth(self) -> set[str] | None:
        """Accepted ``Authorization`` header values (None: no check)."""
        ok = set()
        if self.username is not None and self.key is not None:
            basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
            ok.add(f"Basic {basic}")
        if self.api_token is not None:
            ok.add(f"Bearer {self.api_token}")
        return ok or None

    def paths(self) -> list[str]:
        """``METHOD path`` of every request so far."""
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, every response has a Content-Length."""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    @property
    def fake(self) -> FakeKaggle:
        return self.server.fake  # type: ignore[attr-defined]

    def _authorized(self) -> bool:
        ok = self.fake.expected_auth()
        return ok is None or self.headers.get("Authorization") in ok

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"code": status, "message": message})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        authorized = self._authorized()
        self.fake.record(Request("POST", self.path, body, authorized))
        if not self.path.startswith(API):
            return self._error(404, f"no such endpoint {self.path}")
        if not authorized:
            return self._error(401, "Unauthenticated")
        if not isinstance(body, dict):
            return self._error(400, "body must be a JSON object")
        key = (body.get("ownerSlug", ""), body.get("datasetSlug", ""))
        ds = self.fake._datasets.get(key)
        if ds is None:
            return self._error(404, f"dataset {key[0]}/{key[1]} not found")
        method = self.path[len(API):]
        if method == "GetDataset":
            return self._json(200, {"id": 1, "ref": f"{key[0]}/{key[1]}",
                                    "title": key[1], "currentVersionNumber": ds.version})
        if method == "DownloadDataset":
            if body.get("datasetVersionNumber") != ds.version:
                return self._error(404, f"version {body.get('datasetVersionNumber')} not found")
            host = self.headers.get("Host", f"{self.fake.host}:{self.fake.port}")
            location = f"http://{host}{STORAGE}{key[0]}/{key[1]}/{ds.version}/archive.zip"
            return self._send(302, b"", "text/plain", {"Location": location})
        return self._error(404, f"no such method {method}")

    def do_GET(self) -> None:
        self.fake.record(Request("GET", self.path, None, self._authorized()))
        parts = self.path[len(STORAGE):].split("/") if self.path.startswith(STORAGE) else []
        ds = self.fake._datasets.get((parts[0], parts[1])) if len(parts) == 4 else None
        if ds is None or parts[2] != str(ds.version):
            return self._send(404, b"not found", "text/plain")
        md5 = ds.md5_b64 if not self.fake.corrupt_md5 else base64.b64encode(b"0" * 16).decode()
        self._send(200, ds.archive, "application/zip",
                   {"x-goog-hash": f"crc32c=AAAAAA==,md5={md5}"})
