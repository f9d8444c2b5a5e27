"""A local HTTP server speaking the Hugging Face Hub endpoints ``snapshot_download`` uses.

``GET /api/models/<repo>/revision/<rev>`` (repo info with the commit sha),
``GET /api/models/<repo>/tree/<sha>`` (file list) and ``GET|HEAD /<repo>/resolve/<sha>/<path>``
(file bytes with ``X-Repo-Commit`` and ``ETag``). Point ``HF_ENDPOINT`` at it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub({"org/model": {"config.json": b"{}"}}, token="hf_x") as hub: hub.url``."""

    def __init__(self, repos: dict[str, dict[str, bytes]], token: str | None = None) -> None:
        self.repos, self.token, self.requests = repos, token, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None,
                      body: bool = True) -> None:
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, b'{"error": "Invalid credentials"}',
                                      {"X-Error-Code": "GatedRepo"}, body)
                for repo, files in hub.repos.items():
                    api = f"/api/models/{repo}/"
                    if path.startswith(api + "revision/"):
                        info = {"id": repo, "sha": SHA,
                                "siblings": [{"rfilename": f} for f in files]}
                        return self._send(200, json.dumps(info).encode(),
                                          {"Content-Type": "application/json"}, body)
                    if path.startswith(api + "tree/"):
                        tree = [{"type": "file", "path": f, "size": len(b),
                                 "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()]
                        return self._send(200, json.dumps(tree).encode(),
                                          {"Content-Type": "application/json"}, body)
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[1]
                        if name in files:
                            data = files[name]
                            return self._send(200, data, {
                                "X-Repo-Commit": SHA,
                                "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, body)
                return self._send(404, b'{"error": "Repository not found"}',
                                  {"X-Error-Code": "RepoNotFound"}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
