"""The client of ``samtrack serve``: :func:`connect` returns a :class:`Client` whose
:meth:`~Client.open_session` gives a :class:`~samtrack.remote.session.RemoteSession` (the session
interface of :mod:`samtrack.session.protocol`, computed on the server).

HTTP (httpx) carries the protocol of ``docs/remote.md``. Failures arrive as samtrack's typed errors:
the server's ``{"error": {"type", "message"}}`` body as that class with that message (the local API's),
401 :class:`~samtrack.errors.AuthenticationError`, 403 :class:`~samtrack.errors.ForbiddenPathError`,
413 :class:`~samtrack.errors.UploadTooLargeError`, 429 :class:`~samtrack.errors.RateLimitedError`, and a
server that cannot be reached :class:`~samtrack.errors.ServerUnavailableError` (naming the URL).

A request that could not connect (a server restarting) is tried again with backoff for up to
``reconnect_timeout`` seconds; so are idempotent requests whose connection broke. The first request of
:func:`connect` is not: a wrong URL fails at once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import httpx

from samtrack.errors import InvalidOptionError, UploadTooLargeError
from samtrack.remote import wire
from samtrack.remote._http import Http, jsonable
from samtrack.remote.session import RemoteSession

log = logging.getLogger(__name__)

PROTOCOL = 1
DEFAULT_TIMEOUT = 300.0  # s per request (opening a session loads a model; a CPU prompt can take seconds)
_CHUNK = 1 << 20  # upload chunk (bytes)


class Client:
    """A connection to one ``samtrack serve`` server (:func:`connect`). Thread-safe; a context manager.

    ``url``: the server's base URL (no trailing slash); ``server_info``: its ``GET /v1/server`` answer
    (``version``, ``protocol``, ``device``, ``roots``, ``models``, ``max_upload_bytes``)."""

    def __init__(self, http: Http, server_info: dict):
        self._http = http
        self.url = http.url
        self.server_info = server_info

    def files(self, under=None) -> list[dict]:
        """What the server holds under ``under`` (a folder: a root, or a path under one); None: the roots.
        ``[{"path", "size" (bytes), "is_dir"}]``. Raises :class:`~samtrack.errors.ForbiddenPathError`
        outside the roots."""
        params = {} if under is None else {"under": os.fspath(under)}
        return self._http.json("GET", "/v1/files", params=params)["files"]

    def upload(self, path, progress: Callable[[int, int], None] | None = None, *, name: str | None = None) -> str:
        """Send the local file ``path`` to the server (streamed, 1 MiB at a time); returns its path there,
        to give to :meth:`open_session`. ``progress(sent_bytes, total_bytes)``. Raises
        :class:`~samtrack.errors.UploadTooLargeError` over the server's limit (checked before sending),
        :class:`~samtrack.errors.InvalidOptionError` when ``path`` is not a file."""
        p = Path(path)
        if not p.is_file():
            raise InvalidOptionError(f"{p} is not a file: upload a video file (a folder or stack: zip it, or copy "
                                     "it under one of the server's roots)")
        size = p.stat().st_size
        limit = self.server_info.get("max_upload_bytes")
        if limit is not None and size > int(limit):
            raise UploadTooLargeError(f"{p.name} is {size / 2**20:.1f} MiB, over the server's upload limit of "
                                      f"{int(limit) / 2**20:.1f} MiB: copy it under one of the server's roots "
                                      "instead, or raise samtrack serve --max-upload-mb")

        def chunks():
            sent = 0
            with open(p, "rb") as f:
                while block := f.read(_CHUNK):
                    sent += len(block)
                    yield block
                    if progress:
                        progress(sent, size)

        body = self._http.json("PUT", f"/v1/uploads/{quote(name or p.name)}", content=chunks(), retry=False,
                               headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        return body["video"]

    def open_session(self, video, *, model: str | None = None, checkpoint=None, image_size: int | None = None,
                     workdir=None, reset: bool = False, config=None, **video_options) -> RemoteSession:
        """Open ``video`` (a path under one of the server's roots, or what :meth:`upload` returned) on the
        server; arguments as :func:`samtrack.open_session` takes them, paths being the server's.
        ``config``: a :class:`~samtrack.session.types.SessionConfig` or a dict of its fields.
        Opening the same video, model and size again (after a server restart too) gives the same session,
        reopened from its folder. Raises the local API's errors (CheckpointError, JobMismatchError, ...)
        and :class:`~samtrack.errors.ForbiddenPathError` outside the roots."""
        if is_dataclass(config):
            config = asdict(config)
        request = jsonable({"video": os.fspath(video), "model": model,
                            "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
                            "image_size": image_size, "workdir": None if workdir is None else os.fspath(workdir),
                            "reset": bool(reset), "video_options": video_options, "config": config or {}})
        state = self._http.json("POST", "/v1/sessions", json=request, idempotent=not reset)
        return RemoteSession(self._http, {**request, "reset": False}, state)

    def sessions(self) -> list[dict]:
        """The server's open sessions, as session states (``id``, ``video``, ``workdir``, ``model``, ...)."""
        return self._http.json("GET", "/v1/sessions")["sessions"]

    def close(self) -> None:
        """Close the connection pool (sessions stay open on the server; close them first if done)."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<samtrack Client {self.url} ({self.server_info.get('device')})>"


def connect(url: str, *, token: str | None = None, token_file=None, timeout: float = DEFAULT_TIMEOUT,
            reconnect_timeout: float = 120.0, http: httpx.Client | None = None) -> Client:
    """Connect to ``samtrack serve`` at ``url`` (e.g. ``http://127.0.0.1:8765``, through an SSH tunnel
    across a network) and check that it answers and speaks this protocol.

    ``token``, or ``token_file`` (its first line; the file ``samtrack serve --token-file`` wrote).
    ``timeout``: seconds per request; ``reconnect_timeout``: how long a session keeps trying to reach a
    server that went away (a restart) before raising :class:`~samtrack.errors.ServerUnavailableError`.
    ``http``: an httpx.Client to send through (tests: starlette's TestClient; ``url`` is then its base URL).

    Raises :class:`~samtrack.errors.ServerUnavailableError` when nothing answers at ``url`` (at once),
    :class:`~samtrack.errors.AuthenticationError` for a missing or wrong token, and
    :class:`~samtrack.remote.wire.WireError` for a server of another protocol version."""
    if token is None and token_file is not None:
        p = Path(os.path.expanduser(os.fspath(token_file)))
        if not p.is_file():
            raise InvalidOptionError(f"no token file {p}: copy the one `samtrack serve --token-file` wrote on the "
                                     "server")
        token = p.read_text().strip()
    if not url.startswith(("http://", "https://")):
        raise InvalidOptionError(f"server URL {url!r}: give it as http://host:port (https:// behind a TLS proxy)")
    h = Http(url, token=token, timeout=timeout, reconnect_timeout=reconnect_timeout, http=http)
    try:
        info = h.json("GET", "/v1/server", retry=False)
        if info.get("protocol") != PROTOCOL:
            raise wire.WireError(f"the server at {h.url} speaks protocol {info.get('protocol')!r}, this client "
                                 f"{PROTOCOL}: install the same samtrack version on both sides")
    except BaseException:
        h.close()
        raise
    return Client(h, info)


__all__ = ["Client", "RemoteSession", "connect"]
