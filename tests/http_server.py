"""A small Hugging Face Hub on 127.0.0.1, served from a thread, that huggingface_hub downloads from.

`HEAD|GET /{org}/{name}/resolve/{revision}/{path}` answers as the Hub does (what
`huggingface_hub.file_download` reads): for an LFS file a 302 to `/blobs/{sha256}` on `blob_server`
(this server or another, the CDN), carrying X-Repo-Commit, X-Linked-Etag (the sha256) and
X-Linked-Size; for a small git file (`mode="git"`) the bytes themselves with X-Repo-Commit and ETag =
the git blob sha1; as a plain web server (`mode="static"`) the bytes with none of the Hub's headers.
A missing file is a 404 with X-Error-Code EntryNotFound and the commit (huggingface_hub then records
the absence in the cache), a missing revision one with RevisionNotFound. Blob bodies carry the file
name in Content-Disposition (the progress bar shows it) and honour `Range: bytes=N-` with a 206.
`GET /api/models/{org}/{name}/revision/{revision}` lists the repo as the Hub does (what
`HfApi.model_info` and so `snapshot_download` read): its id, the commit and every file's name, and
the same 404s for a missing repo or revision. Every request is recorded in `requests`.

huggingface_hub reads HF_ENDPOINT once, at import: `use_endpoint` points the running process at a
server (setting the variable then changes nothing).
"""

import hashlib
import json
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from urllib.parse import unquote

import pytest
from huggingface_hub import constants, file_download


@dataclass
class Seen:
    method: str
    path: str
    headers: Message  # names compare without case, as in HTTP


class FakeHub:
    def __init__(self, blob_server: "FakeHub | None" = None) -> None:
        self.commit = "0123456789abcdef0123456789abcdef01234567"
        self.files: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[str, tuple[str, bytes]] = {}  # sha256 -> (file name, bytes)
        self.blob_server = blob_server or self
        self.requests: list[Seen] = []
        self.mode = "lfs"
        self.status: int | None = None  # answer every resolve request with this HTTP error
        self.cuts: list[int] = []  # the next bodies stop after these many bytes, one per response
        self.corrupt = False  # flip the first byte of every body
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def add(self, repo_id: str, filename: str, data: bytes) -> str:
        """Publish `data` as `filename` of `repo_id`; returns its sha256 (the LFS etag)."""
        self.files[repo_id, filename] = data
        sha256 = hashlib.sha256(data).hexdigest()
        self.blob_server.blobs[sha256] = (PurePosixPath(filename).name, data)
        return sha256

    def paths(self, method: str | None = None) -> list[str]:
        return [seen.path for seen in self.requests if method in (None, seen.method)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """What HF_ENDPOINT=url does when set before huggingface_hub is imported: the library copies it
    into `constants.ENDPOINT`, and file_download its URL template, at import."""
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        file_download, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


def git_sha1(data: bytes) -> str:
    """The id git gives a file's content, which the Hub sends as ETag for files not in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    def _answer(self, send_body: bool) -> None:
        hub: FakeHub = self.server.hub
        hub.requests.append(Seen(self.command, self.path, self.headers))
        parts = [unquote(part) for part in self.path.split("/")]
        if parts[1] == "blobs" and parts[2] in hub.blobs:
            name, data = hub.blobs[parts[2]]
            disposition = f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"
            self._body(hub, data, {"Content-Disposition": disposition}, send_body)
        elif len(parts) == 7 and parts[1:3] == ["api", "models"] and parts[5] == "revision":
            self._listing(hub, f"{parts[3]}/{parts[4]}", parts[6], send_body)
        elif len(parts) >= 6 and parts[3] == "resolve":
            self._resolve(hub, f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), send_body)
        else:
            self._error(404, {"X-Error-Message": "Not found"})

    def _resolve(self, hub: FakeHub, repo_id: str, revision: str, filename: str, send_body: bool) -> None:
        data = hub.files.get((repo_id, filename))
        if hub.status is not None:
            self._error(hub.status, {"X-Error-Message": "Invalid credentials in Authorization header"})
        elif revision not in ("main", hub.commit):
            self._error(
                404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + revision}
            )
        elif data is None:
            missing = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}
            self._error(404, {**missing, "X-Repo-Commit": hub.commit})
        elif hub.mode == "lfs":
            sha256 = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"{hub.blob_server.url}/blobs/{sha256}")
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", '"not-the-file-etag"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif hub.mode == "git":
            self._body(hub, data, {"X-Repo-Commit": hub.commit, "ETag": f'"{git_sha1(data)}"'}, send_body)
        else:
            self._body(hub, data, {}, send_body)

    def _listing(self, hub: FakeHub, repo_id: str, revision: str, send_body: bool) -> None:
        files = [name for repo, name in hub.files if repo == repo_id]
        if hub.status is not None:
            self._error(hub.status, {"X-Error-Message": "Invalid credentials in Authorization header"})
        elif not files:
            self._error(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        elif revision not in ("main", hub.commit):
            self._error(
                404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + revision}
            )
        else:
            info = {"id": repo_id, "sha": hub.commit, "siblings": [{"rfilename": name} for name in files]}
            body = json.dumps(info).encode()  # whole, whatever `cuts` and `corrupt` do to files
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    def _body(self, hub: FakeHub, data: bytes, headers: dict[str, str], send_body: bool) -> None:
        start = 0
        asked = self.headers.get("Range")
        if asked:
            start = int(asked.removeprefix("bytes=").removesuffix("-"))
            if start >= len(data):
                return self._error(416, {"X-Error-Message": "Range not satisfiable"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not send_body:
            return
        body = (bytes([data[0] ^ 0xFF]) + data[1:] if hub.corrupt else data)[start:]
        if hub.cuts:
            body = body[: hub.cuts.pop(0)]  # the connection closes after this: a drop mid-body
        self.wfile.write(body)

    def _error(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
