"""A real ``samtrack serve`` in a subprocess on 127.0.0.1, for tests of the server and the client.

    with ServerProcess(roots=[tmp / "data"], workdir=tmp / "srv") as srv:
        httpx.get(srv.url + "/v1/server", headers=srv.headers)
        srv.kill(); srv.restart()          # SIGKILL, then the same port and arguments again

The server's output goes to ``srv.log_path``; ``srv.log()`` returns it (print it when a test fails: the
context manager does so itself when the block raises).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT = 180.0  # generous: 2 shared cores, torch imported by the server on start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``samtrack serve --host 127.0.0.1 --port <free> --root ... --token-file <workdir>/token`` plus
    ``args``. ``workdir`` holds the token file, the log and (unless ``args`` says ``--sessions``) the
    session folders; ``env`` is added to the environment (``SAMTRACK_CACHE_DIR`` defaults to
    ``<workdir>/cache``, so nothing is written under ~/.cache)."""

    def __init__(self, roots, workdir: Path, *, args=(), env: dict | None = None, token: str | None = None,
                 start_timeout: float = START_TIMEOUT):
        self.roots = [Path(r) for r in roots]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = [str(a) for a in args]
        self.token = token or secrets.token_urlsafe(24)
        self.token_file = self.workdir / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        self.env = {**os.environ, "SAMTRACK_CACHE_DIR": str(self.workdir / "cache"), "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self.start_timeout = start_timeout
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-c", "from samtrack.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--token-file", str(self.token_file)]
        for r in self.roots:
            cmd += ["--root", str(r)]
        if "--sessions" not in self.args:
            cmd += ["--sessions", str(self.workdir / "sessions")]
        return cmd + self.args

    def start(self) -> "ServerProcess":
        """Start the server and wait until ``GET /v1/server`` answers 200 (raises with the log otherwise)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.starts += 1
        self._log = open(self.log_path, "a")
        self._log.write(f"\n===== start {self.starts}: {' '.join(self.command())}\n")
        self._log.flush()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"samtrack serve exited with {self.proc.returncode} before answering:\n"
                                   + self.log()[-4000:])
            try:
                if self.get_json("/v1/server", timeout=5) is not None:
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"samtrack serve did not answer within {self.start_timeout:.0f} s:\n"
                                   + self.log()[-4000:])
            time.sleep(0.2)

    def get_json(self, path: str, *, timeout: float = 30):
        """``GET path`` with the token: the decoded JSON (urllib; no client library needed)."""
        req = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (no flush, no cleanup: a crash) and wait for the process to end."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self._wait(30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a clean shutdown: sessions flushed and closed) and wait; SIGKILL after ``timeout``."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._wait(30)

    def restart(self) -> "ServerProcess":
        """Stop (if running) and start again on the same port with the same arguments."""
        self.stop()
        return self.start()

    def _wait(self, timeout: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """Everything the server printed so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, et, ev, tb) -> None:
        self.stop()
        if et is not None:
            sys.stderr.write(f"\n----- samtrack serve log ({self.log_path}) -----\n{self.log()[-8000:]}\n")


# A local and a served session compute with the same number of torch threads (CPU reductions may round
# differently otherwise): SERVER_ENV for the server subprocess, same_torch_threads() for this process.
THREADS = max(1, min(2, os.cpu_count() or 1))
SERVER_ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def same_torch_threads():
    """Generator for a module-scoped fixture: this process uses THREADS torch threads, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def ok(r) -> dict:
    """The JSON of a 200 answer (the body in the assertion message otherwise)."""
    assert r.status_code == 200, r.text
    return r.json()


def err(r, status: int, kind: str) -> str:
    """The message of an error answer with ``status`` and error type ``kind``."""
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["type"] == kind, e
    return e["message"]

