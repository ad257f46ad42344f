"""A local HTTP server speaking the Hugging Face Hub's routes that `huggingface_hub` uses to
download a file (model info with file metadata, HEAD and ranged GET on /resolve/), for one
repo holding real files; the Hub itself is unreachable from here. It can cut the first
download half-way, or serve corrupt bytes, to test resume and the checksum."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubRepo:
    repo: str
    files: dict[str, Path]
    """File name in the repo -> a local file with its bytes."""
    listed_only: dict[str, int] = field(default_factory=dict)
    """Files the repo lists (name -> size) but that this server never serves."""
    cut_first_get: bool = False
    corrupt: bool = False
    ranges: list[str] = field(default_factory=list)
    """The Range header of every GET (empty string when none)."""
    sha: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, path in self.files.items():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            self.sha[name] = digest.hexdigest()


def _handler(hub: HubRepo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self) -> tuple[str, Path] | None:
            prefix = f"/{hub.repo}/resolve/"
            if not self.path.startswith(prefix):
                return None
            name = self.path[len(prefix):].split("/", 1)[1].split("?")[0]
            path = hub.files.get(name)
            return (name, path) if path is not None else None

        def _not_found(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            info = f"/api/models/{hub.repo}"
            if self.path.split("?")[0] in (info, f"{info}/revision/main",
                                           f"{info}/revision/{COMMIT}"):
                siblings = [{"rfilename": n, "size": p.stat().st_size,
                             "lfs": {"sha256": hub.sha[n], "size": p.stat().st_size,
                                     "pointerSize": 134}} for n, p in hub.files.items()]
                siblings += [{"rfilename": n, "size": s, "lfs": {
                    "sha256": "0" * 64, "size": s, "pointerSize": 134}}
                    for n, s in hub.listed_only.items()]
                siblings.append({"rfilename": "README.md", "size": 10})
                self._json({"id": hub.repo, "modelId": hub.repo, "sha": COMMIT,
                            "private": False, "siblings": siblings})
                return
            found = self._file()
            if found is None:
                self._not_found()
                return
            _, path = found
            data = path.read_bytes()
            if hub.corrupt:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            given = self.headers.get("Range", "")
            hub.ranges.append(given)
            start = int(given.removeprefix("bytes=").split("-")[0]) if given else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if hub.cut_first_get and len(hub.ranges) == 1:
                self.wfile.write(data[start:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the download dies half-way
                return
            self.wfile.write(data[start:])

        def do_HEAD(self) -> None:
            found = self._file()
            if found is None:
                self._not_found()
                return
            name, path = found
            size = str(path.stat().st_size)
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hub.sha[name]}"')
            self.send_header("X-Linked-Size", size)
            self.send_header("ETag", f'"{hub.sha[name]}"')
            self.send_header("Content-Length", size)
            self.end_headers()

    return Handler


@contextmanager
def serve_hub(hub: HubRepo) -> Iterator[str]:
    """Serves `hub` on a free local port; yields its base URL (for HF_ENDPOINT)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
