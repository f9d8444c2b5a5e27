"""A local fake of the subset of Cohere's HTTP API that ``clinlm`` uses (for tests only).

Paths and shapes as the installed ``cohere`` SDK (v7) sends/parses them:

* ``POST /v2/chat`` JSON ``{"model", "messages", ...}`` ->
  ``{"id", "finish_reason", "message": {"role": "assistant", "content": [{"type": "text",
  "text": ...}]}}``; 401 when ``Authorization: Bearer <key>`` does not match, 404 when
  ``models`` is given and the model is not in it.

Every request is recorded (time, method, path, whether ``Authorization: Bearer <key>``
matched, the row key parsed from the last user message, the status sent, the action).
Chat faults are scripted per row key: ``chat_script = {"r003": ["429:1", "500"], ...}``
is consumed one action per request for that row, then replies are normal. Actions:
``"429"`` / ``"429:<retry-after>"``, ``"500"``, ``"503"``, ``"400"``, ``"slow"``
(sleep ``slow_s`` before answering), ``"badjson"`` (200 with a body that is not JSON),
``"noshape"`` (200 with JSON of the wrong shape), ``"text:<reply>"`` (that reply text),
``"ok"``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

ROW_RE = re.compile(r"\b(r\d{3})\b")


def default_answer(row: str | None, model: str) -> str:
    """Deterministic answer: ``Yes`` for even row numbers, ``No`` for odd ones."""
    n = int(row[1:]) if row else 0
    return "Yes" if n % 2 == 0 else "No"


class FakeCohere:
    def __init__(self, api_key: str, *, chat_script: dict[str, list[str]] | None = None,
                 answer: Callable[[str | None, str], str] = default_answer,
                 slow_s: float = 1.0, models: set[str] | None = None) -> None:
        self.api_key = api_key
        self.chat_script = {k: list(v) for k, v in (chat_script or {}).items()}
        self.answer = answer
        self.slow_s = slow_s
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def __enter__(self) -> Self:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         kwargs={"poll_interval": 0.05}).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- queries used by tests
    def chat_requests(self, row: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v2/chat"
                    and (row is None or r["row"] == row)]

    def answered(self) -> dict[str, int]:
        """Row key -> number of chat requests answered normally (a ``slow`` reply is not
        counted: the client has given up on it by the time it is sent)."""
        counts: dict[str, int] = {}
        for r in self.chat_requests():
            if r["status"] == 200 and (r["action"] == "ok" or r["action"].startswith("text:")):
                counts[r["row"]] = counts.get(r["row"], 0) + 1
        return counts

    def next_action(self, row: str | None) -> str:
        with self.lock:
            script = self.chat_script.get(row or "")
            return script.pop(0) if script else "ok"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCohere
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    # -- helpers
    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # client gave up (timeout)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self, **kw: Any) -> dict[str, Any]:
        rec = {"t": time.monotonic(), "method": self.command,
               "path": urlsplit(self.path).path,
               "auth_ok": self.headers.get("Authorization") == f"Bearer {self.fake.api_key}",
               "row": None, "status": None, "action": "", **kw}
        with self.fake.lock:
            self.fake.requests.append(rec)
        return rec

    def _auth(self, rec: dict[str, Any]) -> bool:
        if rec["auth_ok"]:
            return True
        rec["status"] = 401
        self._send(401, {"message": "invalid api token"})
        return False

    # -- routes
    def do_GET(self) -> None:
        rec = self._record()
        if self._auth(rec):
            rec["status"] = 404
            self._send(404, {"message": f"no route {rec['path']}"})

    def do_POST(self) -> None:
        body = self._body()
        rec = self._record()
        if not self._auth(rec):
            return
        if rec["path"] == "/v2/chat":
            return self._chat(rec, body)
        rec["status"] = 404
        self._send(404, {"message": f"no route {rec['path']}"})

    def _chat(self, rec: dict[str, Any], body: bytes) -> None:
        req = json.loads(body)
        msgs = req.get("messages") or []
        users = [m for m in msgs if m.get("role") == "user"]
        m = ROW_RE.search(users[-1]["content"]) if users else None
        row = m.group(1) if m else None
        action = self.fake.next_action(row)
        rec.update(row=row, action=action, model=req.get("model"), n_messages=len(msgs),
                   roles=[x.get("role") for x in msgs], temperature=req.get("temperature"))
        if self.fake.models is not None and req.get("model") not in self.fake.models:
            rec["status"] = 404
            return self._send(404, {"message": f"model '{req.get('model')}' not found"})
        code = action.split(":")[0]
        if code == "429":
            retry_after = action.split(":", 1)[1] if ":" in action else "0"
            rec["status"] = 429
            return self._send(429, {"message": "too many requests"},
                              headers={"Retry-After": retry_after})
        if code in ("500", "503", "400"):
            rec["status"] = int(code)
            return self._send(int(code), {"message": f"injected {code}"})
        if action == "badjson":
            rec["status"] = 200
            return self._send(200, None, raw=b'{"id": "x", "message": {"content": [{"ty')
        if action == "noshape":
            rec["status"] = 200
            return self._send(200, {"unexpected": True})
        if action == "slow":
            time.sleep(self.fake.slow_s)
        text = action[5:] if action.startswith("text:") else self.fake.answer(row, req["model"])
        rec["status"] = 200
        self._send(200, {"id": f"chat-{len(self.fake.requests)}", "finish_reason": "COMPLETE",
                         "message": {"role": "assistant",
                                     "content": [{"type": "text", "text": text}]},
                         "usage": {"billed_units": {"input_tokens": 10, "output_tokens": 1}}})

