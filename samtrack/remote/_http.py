"""HTTP plumbing of the remote client: the token header, typed errors from answers, reconnect backoff.

See :mod:`samtrack.remote.client` for what maps to what.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import numpy as np

from samtrack.errors import (AuthenticationError, ForbiddenPathError, RateLimitedError, SamtrackError,
                             ServerUnavailableError, UploadTooLargeError)
from samtrack.remote import wire

log = logging.getLogger("samtrack.remote.client")

# seconds a propagation stream may stay silent before it counts as lost (and is resumed): the server's
# heartbeat is every 10 s once it streams; the first line waits for the first frame (or the device queue's
# first word), which a slow CPU at full size can take minutes over
STREAM_READ_TIMEOUT = 300.0
_TRANSIENT = (502, 503, 504)  # a proxy or a server starting up: retried when the body is not a samtrack error
_STATUS_ERRORS = {401: AuthenticationError, 403: ForbiddenPathError, 413: UploadTooLargeError, 429: RateLimitedError}


def jsonable(x):
    """numpy arrays, scalars, tuples and paths as plain JSON values (lists, ints, floats, str)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


class Http:
    """Requests to one server: the token header, error mapping and reconnect backoff.

    ``http``: an httpx.Client to use (e.g. starlette's TestClient around the app); default one of our own,
    closed by :meth:`close`."""

    def __init__(self, url: str, *, token: str | None, timeout: float, reconnect_timeout: float,
                 http: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self.reconnect_timeout = float(reconnect_timeout)
        self._own = http is None
        self.http = http if http is not None else httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)), follow_redirects=False)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        """Close the HTTP connections (only those of a client this object created, not an injected one)."""
        if self._own:
            self.http.close()

    def unavailable(self, err: BaseException, waited: float = 0.0) -> ServerUnavailableError:
        """The :class:`ServerUnavailableError` for transport error ``err`` after ``waited`` seconds of retries."""
        how = f" for {waited:.0f} s" if waited >= 1 else ""
        return ServerUnavailableError(
            f"cannot reach the samtrack server at {self.url}{how} ({type(err).__name__}: {err}); check that "
            "`samtrack serve` runs there and the URL (an SSH tunnel still open?)")

    def request(self, method: str, path: str, *, retry: bool = True, idempotent: bool | None = None,
                headers: dict | None = None, **kw) -> httpx.Response:
        """One request; a 4xx/5xx raises its typed error. ``retry``: try again for up to
        ``reconnect_timeout`` s while the server cannot be reached (and, for ``idempotent`` requests,
        GET/DELETE by default, when the connection broke)."""
        idempotent = method in ("GET", "DELETE") if idempotent is None else idempotent
        headers = headers or {}
        backoff = Backoff(self.reconnect_timeout if retry else 0.0)
        while True:
            try:
                r = self.http.request(method, self.url + path, headers={**self.headers, **headers}, **kw)
            except httpx.TransportError as e:
                if not (retryable(e, idempotent) and backoff.wait(e)):
                    raise self.unavailable(e, backoff.waited) from e
                continue
            if is_transient(r) and backoff.wait(f"HTTP {r.status_code}"):
                continue
            if r.status_code >= 400:
                self.raise_for(r)
            return r

    def json(self, method: str, path: str, **kw) -> dict:
        """:meth:`request`, then its JSON body (a body that is not JSON raises :class:`WireError`)."""
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError as e:
            raise wire.WireError(f"the server's answer to {method} {path} is not JSON: {r.text[:200]!r}") from e

    @contextmanager
    def stream(self, method: str, path: str, **kw) -> Iterator[httpx.Response]:
        """A streamed response; errors as :meth:`request`. The read timeout is :data:`STREAM_READ_TIMEOUT`
        (the server sends a line at least every 10 s once streaming, so a silent connection is a lost one);
        transport errors are raised as they are (the caller decides about resuming)."""
        kw.setdefault("timeout", httpx.Timeout(self.http.timeout.connect or 10.0, read=STREAM_READ_TIMEOUT))
        with self.http.stream(method, self.url + path, headers=self.headers, **kw) as r:
            if is_transient(r):
                raise ServerUnavailableError(f"the samtrack server at {self.url} answered {r.status_code} "
                                             f"{r.reason_phrase} (starting up, or behind a proxy that lost it)")
            if r.status_code >= 400:
                r.read()
                self.raise_for(r)
            yield r

    def raise_for(self, r: httpx.Response) -> None:
        """Raise the typed error of an error answer."""
        try:
            body = r.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else None
        forced = _STATUS_ERRORS.get(r.status_code)
        if forced is not None:
            raise forced(msg or _status_message(r.status_code, self.url))
        if not isinstance(err, dict):
            raise SamtrackError(f"the samtrack server at {self.url} answered {r.status_code} {r.reason_phrase}: "
                                f"{r.text[:300]}")
        wire.raise_error(body, r.status_code)


def _status_message(status: int, url: str) -> str:
    return {401: f"the server at {url} refused the token: pass the token of its --token-file (token= or token_file=)",
            403: "a path outside the server's roots: name a file under one of them (see Client.server_info['roots'])",
            413: "the upload is over the server's limit (samtrack serve --max-upload-mb)",
            429: "too many requests: wait a moment and try again"}[status]


def retryable(e: httpx.TransportError, idempotent: bool) -> bool:
    """A connection that was never made (nothing was sent), or a broken one for an idempotent request."""
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return idempotent and isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))


def is_transient(r: httpx.Response) -> bool:
    """502/503/504 that is not one of samtrack's own errors (a proxy, a server starting)."""
    if r.status_code not in _TRANSIENT:
        return False
    try:
        body = r.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


class Backoff:
    """Waits of 0.2, 0.4, ... 2 s until ``budget`` seconds have passed since the first."""

    def __init__(self, budget: float):
        self.budget, self.delay, self.start = budget, 0.2, None
        self.waited = 0.0

    def wait(self, why) -> bool:
        """Sleep before the next try; False when the budget is spent."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.waited = now - self.start
        if self.waited + self.delay > self.budget:
            return False
        log.info("samtrack server not answering (%s); trying again in %.1f s", why, self.delay)
        time.sleep(self.delay)
        self.delay = min(2.0, self.delay * 2)
        return True

    def reset(self) -> None:
        """Start over: the next wait is the shortest and the time budget is whole again."""
        self.delay, self.start, self.waited = 0.2, None, 0.0


