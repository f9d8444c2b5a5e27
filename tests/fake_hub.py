"""A local HTTP server speaking the Hugging Face Hub endpoints huggingface_hub calls.

Download (``snapshot_download``): ``GET /api/models/<repo>[/revision/<rev>]`` (repo info with
the commit sha of ``rev``: a branch or a commit; :meth:`FakeHub.push` adds a commit and keeps
the older ones), ``GET /api/models/<repo>/tree/<rev>`` (file list: git blob sha1 ``oid``, an
``lfs`` entry with the sha256 for LFS files) and ``GET|HEAD /<repo>/resolve/<rev>/<path>``
(bytes, ``X-Repo-Commit``, ``ETag``).

Upload (``create_repo``, ``upload_folder`` / ``create_commit`` over the LFS protocol; the
Xet protocol needs ``HF_HUB_DISABLE_XET=1``): ``POST /api/repos/create`` (409 when it
exists), ``POST /api/validate-yaml`` (the README header must parse), ``POST
/api/models/<repo>/preupload/<rev>`` (``lfs`` for ``*.safetensors``/``*.bin`` or > 10 MB, as
the Hub's default ``.gitattributes``; the ``oid`` of a file already there), ``POST
/<repo>.git/info/lfs/objects/batch`` (an upload action only for objects not stored yet),
``PUT /_lfs/<oid>`` (the "S3" upload: sha256 checked, no auth, like a presigned URL),
``POST /api/models/<repo>/commit/<rev>`` (ndjson: ``header``, ``file`` base64, ``lfsFile``
referencing an uploaded object; a new commit sha) and ``POST /api/models/<repo>/branch/<b>``.

Records every request (``requests``: method, path, Authorization), every create payload
(``created``) and every commit (``commits[repo]``). ``fail["commit"] = 500`` answers the next
commit with that status, ``"reset"`` closes the connection instead (a dropped network).
Point ``HF_ENDPOINT`` (or ``huggingface_hub.constants.ENDPOINT``) at ``url``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"
LFS_PATTERN = re.compile(r"\.(safetensors|bin|pt|pth|gguf|skops)$")
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return bool(LFS_PATTERN.search(path)) or size > LFS_MIN_SIZE


class FakeHub:
    """``with FakeHub({"org/model": {"config.json": b"{}"}}, token="hf_x") as hub: hub.url``."""

    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None,
                 token: str | None = None) -> None:
        self.token, self.requests = token, []
        self.repos: dict[str, dict[str, bytes]] = {k: dict(v) for k, v in (repos or {}).items()}
        self.heads: dict[str, str] = {r: SHA for r in self.repos}   # repo -> current commit
        # repo -> commit -> files (every commit, for downloads at a revision)
        self.snapshots: dict[str, dict[str, dict[str, bytes]]] = {
            r: {SHA: dict(f)} for r, f in self.repos.items()}
        self.private: dict[str, bool] = {r: False for r in self.repos}
        self.branches: dict[str, set[str]] = {r: {"main"} for r in self.repos}
        self.commits: dict[str, list[dict]] = {}
        self.created: list[dict] = []
        self.lfs: dict[str, bytes] = {}      # sha256 -> bytes (the object store)
        self.fail: dict[str, int | str] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def do_POST(self):
                self._route(body=True)

            def do_PUT(self):
                self._route(body=True)

            def _send(self, code: int, data: bytes | dict | list, headers: dict | None = None,
                      body: bool = True) -> None:
                if not isinstance(data, bytes):
                    data = json.dumps(data).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, code: int, message: str, error_code: str | None = None,
                       body: bool = True) -> None:
                headers = {"X-Error-Message": message}
                if error_code:
                    headers["X-Error-Code"] = error_code
                self._send(code, {"error": message}, headers, body)

            def _payload(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _route(self, body: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                data = self._payload() if self.command in ("POST", "PUT") else b""
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                if self.command == "PUT" and path.startswith("/_lfs/"):  # presigned: no auth
                    return self._lfs_put(path.rsplit("/", 1)[1], data)
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._error(401, "Invalid credentials", "GatedRepo", body)
                with hub.lock:
                    return self._dispatch(path, url.query, data, body)

            def _dispatch(self, path: str, query: str, data: bytes, body: bool) -> None:
                if self.command == "POST" and path == "/api/repos/create":
                    return self._create(json.loads(data))
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(data)["content"])
                for repo in list(hub.repos):
                    api = f"/api/models/{repo}"
                    if path == api or path.startswith(api + "/revision/"):
                        rev = path[len(api + "/revision/"):] if path != api else None
                        if rev is not None and hub.files(repo, rev) is None:
                            return self._error(404, f"Invalid rev id: {rev}",
                                               "RevisionNotFound", body)
                        return self._send(200, hub.info(repo, rev), body=body)
                    if path.startswith(api + "/tree/"):
                        return self._tree(repo, path[len(api + "/tree/"):], body)
                    if path.startswith(api + "/preupload/"):
                        return self._preupload(repo, path.rsplit("/", 1)[1], json.loads(data))
                    if path.startswith(api + "/commit/"):
                        return self._commit(repo, path.rsplit("/", 1)[1], data)
                    if path.startswith(api + "/branch/"):
                        hub.branches[repo].add(path.rsplit("/", 1)[1])
                        return self._send(200, {})
                    if path == f"/{repo}.git/info/lfs/objects/batch":
                        return self._lfs_batch(json.loads(data))
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        return self._resolve(repo, *path[len(prefix):].split("/", 1), body)
                return self._error(404, "Repository not found", "RepoNotFound", body)

            def _create(self, payload: dict) -> None:
                hub.created.append(payload)
                repo = f"{payload['organization']}/{payload['name']}"
                if repo in hub.repos:  # the Hub's 409 names the repo's url (create_repo reads it)
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{hub.url}/{repo}"},
                                      {"X-Error-Message": "You already created this model repo"})
                hub.repos[repo], hub.heads[repo] = {}, hashlib.sha1(repo.encode()).hexdigest()
                hub.snapshots[repo] = {hub.heads[repo]: {}}
                hub.private[repo] = payload.get("visibility") == "private"
                hub.branches[repo], hub.commits[repo] = {"main"}, []
                return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})

            def _validate_yaml(self, content: str) -> None:
                import yaml
                m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                try:
                    meta = yaml.safe_load(m.group(1)) if m else {}
                    assert isinstance(meta, dict)
                except Exception:
                    return self._send(400, {"errors": [{"message": "invalid YAML header"}]})
                return self._send(200, {"errors": [], "warnings": []})

            def _tree(self, repo: str, rest: str, body: bool) -> None:
                rev, _, sub = rest.partition("/")
                snapshot = hub.files(repo, rev)
                if snapshot is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", body)
                files = {p: b for p, b in snapshot.items() if p.startswith(sub)}
                tree = []
                for p, b in sorted(files.items()):
                    entry = {"type": "file", "path": p, "size": len(b), "oid": git_blob_sha1(b)}
                    if is_lfs(p, len(b)):
                        entry["lfs"] = {"oid": hashlib.sha256(b).hexdigest(), "size": len(b),
                                        "pointerSize": 134}
                    tree.append(entry)
                return self._send(200, tree, body=body)

            def _preupload(self, repo: str, rev: str, payload: dict) -> None:
                out = []
                for f in payload["files"]:
                    mode = "lfs" if is_lfs(f["path"], f["size"]) else "regular"
                    have = hub.repos[repo].get(f["path"])
                    oid = None if have is None else (
                        hashlib.sha256(have).hexdigest() if mode == "lfs" else git_blob_sha1(have))
                    out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False,
                                "oid": oid})
                return self._send(200, {"files": out, "commitOid": hub.heads[repo]})

            def _lfs_batch(self, payload: dict) -> None:
                objects = []
                for o in payload["objects"]:
                    obj = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in hub.lfs:
                        obj["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{o['oid']}"}}
                    objects.append(obj)
                return self._send(200, {"transfer": "basic", "objects": objects})

            def _lfs_put(self, oid: str, data: bytes) -> None:
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._error(400, "sha256 mismatch")
                with hub.lock:
                    hub.lfs[oid] = data
                return self._send(200, b"")

            def _commit(self, repo: str, rev: str, data: bytes) -> None:
                failure = hub.fail.pop("commit", None)
                if failure == "reset":  # the network drops the request: no response at all
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if failure:
                    return self._error(int(failure), "Internal Error - We're working hard to fix this")
                lines = [json.loads(line) for line in data.splitlines() if line.strip()]
                files = dict(hub.repos[repo])
                for item in lines[1:]:
                    v = item["value"]
                    if item["key"] == "file":
                        files[v["path"]] = base64.b64decode(v["content"])
                    elif item["key"] == "lfsFile":
                        if v["oid"] not in hub.lfs:
                            return self._error(422, f"LFS object {v['oid']} was never uploaded")
                        files[v["path"]] = hub.lfs[v["oid"]]
                    elif item["key"] == "deletedFile":
                        files.pop(v["path"], None)
                sha = hashlib.sha1(json.dumps([hub.heads[repo], sorted(
                    (p, git_blob_sha1(b)) for p, b in files.items())]).encode()).hexdigest()
                hub.repos[repo], hub.heads[repo] = files, sha
                hub.snapshots.setdefault(repo, {})[sha] = dict(files)
                hub.commits[repo].append({"sha": sha, "revision": rev, "header": lines[0]["value"],
                                          "paths": [i["value"]["path"] for i in lines[1:]]})
                return self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}",
                                        "commitOid": sha, "pullRequestUrl": None})

            def _resolve(self, repo: str, rev: str, name: str, body: bool) -> None:
                files = hub.files(repo, rev)
                if files is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", body)
                if name not in files:
                    return self._error(404, "Entry not found", "EntryNotFound", body)
                data = files[name]
                return self._send(200, data, {"X-Repo-Commit": hub.commit(repo, rev),
                                              "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def commit(self, repo: str, rev: str | None) -> str:
        """The commit sha a revision (branch, commit, None = main) names now."""
        return self.heads[repo] if rev is None or rev in self.branches[repo] else rev

    def files(self, repo: str, rev: str | None) -> dict[str, bytes] | None:
        """The files of ``repo`` at ``rev`` (None: no such revision)."""
        sha = self.commit(repo, rev)
        return self.repos[repo] if sha == self.heads[repo] else \
            self.snapshots.get(repo, {}).get(sha)

    def push(self, repo: str, files: dict[str, bytes]) -> str:
        """A new commit on main with exactly ``files`` (the older commits stay); its sha."""
        sha = hashlib.sha1(json.dumps([self.heads[repo], sorted(
            (p, git_blob_sha1(b)) for p, b in files.items())]).encode()).hexdigest()
        self.repos[repo], self.heads[repo] = dict(files), sha
        self.snapshots.setdefault(repo, {})[sha] = dict(files)
        return sha

    def info(self, repo: str, rev: str | None = None) -> dict:
        """The repo info JSON (``model_info`` / ``repo_info``) at ``rev`` (default main)."""
        return {"id": repo, "modelId": repo, "sha": self.commit(repo, rev),
                "private": self.private[repo],
                "siblings": [{"rfilename": f} for f in sorted(self.files(repo, rev) or {})]}

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
