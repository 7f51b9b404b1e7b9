"""`skingpt weights fetch` against a local stand-in for the hub (never the real one)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from skingpt.errors import ModelUnavailable
from skingpt.model.hub import KNOWN_MODELS, fetch

COMMIT = "a" * 40
TOKEN = "hf_test_reader"
# Larger than the 10 MiB blocks the hub client writes, so a cut leaves a partial file behind.
WEIGHTS = bytes(range(256)) * (48 * 1024)


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    cut_first_download: tuple[str, int] | None = None  # (file, bytes sent before hanging up)
    ranges: list[str] = field(default_factory=list)
    hang_up: bool = False  # close every connection without answering


class HubStandIn(ThreadingHTTPServer):
    """Speaks the few hub endpoints a snapshot download uses: repo info, HEAD and GET files."""

    daemon_threads = True

    def __init__(self, repos: dict[str, Repo]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        info = re.fullmatch(r"/api/models/(.+)/revision/([^/?]+)(\?.*)?", self.path)
        tree = re.fullmatch(r"/api/models/(.+)/tree/([^/?]+)(\?.*)?", self.path)
        resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path)
        match = info or tree or resolve
        repo_id = match.group(1) if match else ""
        repo = self.server.repos.get(repo_id)
        if repo is not None and repo.hang_up:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if repo.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(403, "GatedRepo", "Access to this model is restricted.")
            return
        if info:
            siblings = [{"rfilename": name} for name in repo.files]
            self._json({"id": repo_id, "sha": COMMIT, "siblings": siblings, "private": False})
        elif tree:
            self._json(
                [
                    {
                        "type": "file",
                        "path": name,
                        "size": len(data),
                        "oid": hashlib.sha1(data).hexdigest(),
                    }
                    for name, data in repo.files.items()
                ]
            )
        elif resolve:
            self._file(repo, resolve.group(3), body=body)

    def _file(self, repo: Repo, name: str, *, body: bool) -> None:
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        start = 0
        requested = self.headers.get("Range")
        if requested:
            repo.ranges.append(requested)
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", requested).group(1))  # type: ignore[union-attr]
        self.send_response(206 if requested else 200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        cut = repo.cut_first_download
        if cut is not None and cut[0] == name and not requested:
            repo.cut_first_download = None
            self.wfile.write(data[: cut[1]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data[start:])

    def _json(self, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    repos = {
        KNOWN_MODELS["derm-llava-1.5-7b"].repo_id: Repo(
            {"config.json": b'{"model_type": "llava"}', "model.safetensors": WEIGHTS}
        ),
        KNOWN_MODELS["medgemma-4b-it"].repo_id: Repo({"config.json": b"{}"}, gated=True),
    }
    server = HubStandIn(repos)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetch_downloads_a_known_model_into_the_cache(hub: HubStandIn, tmp_path: Path) -> None:
    folder = fetch("derm-llava-1.5-7b", cache_dir=tmp_path, endpoint=hub.url)
    assert (folder / "config.json").read_bytes() == b'{"model_type": "llava"}'
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert COMMIT in str(folder)


def test_fetch_resumes_an_interrupted_download(hub: HubStandIn, tmp_path: Path) -> None:
    repo = hub.repos[KNOWN_MODELS["derm-llava-1.5-7b"].repo_id]
    repo.cut_first_download = ("model.safetensors", 11 * 2**20)
    folder = None
    for _ in range(2):  # the first run may stop; running the command again resumes
        try:
            folder = fetch("derm-llava-1.5-7b", cache_dir=tmp_path, endpoint=hub.url)
            break
        except ModelUnavailable as error:
            assert "Run the same command again" in str(error)
    assert folder is not None
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-\d*", repo.ranges[0]).group(1))  # type: ignore[union-attr]
    assert 0 < resumed_at <= 11 * 2**20


def test_fetch_explains_gated_models(hub: HubStandIn, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"gated .*accept the terms.*HF_TOKEN"):
        fetch("medgemma-4b-it", cache_dir=tmp_path, endpoint=hub.url, token=False)  # type: ignore[arg-type]
    folder = fetch("medgemma-4b-it", cache_dir=tmp_path, endpoint=hub.url, token=TOKEN)
    assert (folder / "config.json").is_file()


def test_fetch_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="known: medgemma-4b-it"):
        fetch("some/model", cache_dir=tmp_path)


def test_weights_fetch_command_prints_where_and_how(
    hub: HubStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from skingpt.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    where = ["--cache-dir", str(tmp_path), "--endpoint", hub.url]
    status = main(["weights", "fetch", "derm-llava-1.5-7b", *where])
    out = capsys.readouterr().out
    assert status == 0
    assert "SKINGPT_WEIGHTS=" in out and str(tmp_path) in out
    assert main(["weights", "fetch", "medgemma-4b-it", *where]) == 2
    assert "gated" in capsys.readouterr().err


def test_fetch_says_to_run_again_when_the_server_hangs_up(hub: HubStandIn, tmp_path: Path) -> None:
    hub.repos[KNOWN_MODELS["derm-llava-1.5-7b"].repo_id].hang_up = True
    with pytest.raises(ModelUnavailable, match="Run the same command again"):
        fetch("derm-llava-1.5-7b", cache_dir=tmp_path, endpoint=hub.url)
