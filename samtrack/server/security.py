"""What ``samtrack serve`` checks before it does anything: the token, the paths, the request rate.

- :func:`check_token`: ``Authorization: Bearer <token>``, compared with :func:`secrets.compare_digest`.
- :class:`Roots`: a client's path is relative to a root (or absolute inside one); a ``..`` component or
  a path whose real location (symlinks followed) lies outside every root is refused before anything is
  opened or read (only ``os.path.realpath`` runs, which reads no file's content).
- :class:`RateLimiter`: a token bucket per client address.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from samtrack.errors import AuthenticationError, ForbiddenPathError, InvalidOptionError, RateLimitedError


def check_token(header: str | None, token: str) -> None:
    """Raise :class:`AuthenticationError` unless ``header`` is ``Bearer <token>`` (constant-time comparison)."""
    if not header:
        raise AuthenticationError("no token: send 'Authorization: Bearer <token>' with the token in the server's "
                                  "--token-file (samtrack.connect(url, token=...))")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise AuthenticationError("wrong token: use the one in the server's --token-file")


class Roots:
    """The folders a server may read from and write to. ``roots``: the user's ``--root`` folders (what a
    relative path is resolved against, in order); ``extra``: folders of the server's own (sessions,
    uploads) that are allowed but not browsed first. Every folder is kept as its real path."""

    def __init__(self, roots, extra=()):
        self.roots: list[Path] = [Path(os.path.realpath(r)) for r in roots]
        self.allowed: list[Path] = self.roots + [Path(os.path.realpath(e)) for e in extra]
        if not self.roots:
            raise InvalidOptionError("no root folder: give at least one --root DIR the server may open videos from")

    def inside(self, real: Path) -> bool:
        """Whether the real path ``real`` is one of the allowed folders or lies below one."""
        return any(real == a or a in real.parents for a in self.allowed)

    def resolve(self, path, *, what: str = "path", must_exist: bool = False) -> Path:
        """The real path of a client's ``path`` (str, relative to a root or absolute inside one).

        A relative path is looked for under each root in turn (the first that has it); when none has
        it, it names a place under the first root (for outputs). Raises :class:`ForbiddenPathError`
        for a ``..`` component or a real location outside the roots (symlinks followed), and
        :class:`InvalidOptionError` for an empty or non-string path or (``must_exist``) a missing one."""
        if not isinstance(path, str) or not path.strip() or "\x00" in path:
            raise InvalidOptionError(f"{what} {path!r}: give a path relative to one of the server's roots")
        if ".." in PurePosixPath(path).parts or ".." in PureWindowsPath(path).parts:
            raise ForbiddenPathError(f"{what} {path!r} contains '..': name a path below one of the server's "
                                     f"roots ({self._names()})")
        p = Path(path)
        candidates = [p] if p.is_absolute() else [r / p for r in self.roots]
        chosen = None
        for c in candidates:
            real = Path(os.path.realpath(c))
            if not self.inside(real):
                raise ForbiddenPathError(f"{what} {path!r} lies outside the server's roots ({self._names()}): "
                                         "name a file below one of them, or upload it")
            if chosen is None and os.path.lexists(real):
                chosen = real
        if chosen is None:
            if must_exist:
                raise InvalidOptionError(f"{what} {path!r} does not exist under the server's roots "
                                         f"({self._names()}); GET /v1/files lists them")
            chosen = Path(os.path.realpath(candidates[0]))
        return chosen

    def _names(self) -> str:
        return ", ".join(map(str, self.roots))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """A token bucket per client: ``rate`` requests per second on average, bursts of up to ``burst``
    (default twice the rate, at least 1). ``rate <= 0`` turns it off. Thread-safe."""

    rate: float
    burst: float | None = None
    clock: object = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, client: str) -> None:
        """Take one token for ``client``; raise :class:`RateLimitedError` when its bucket is empty."""
        if self.rate <= 0:
            return
        cap = self.burst if self.burst is not None else max(1.0, 2 * self.rate)
        now = self.clock()
        with self._lock:
            b = self._buckets.get(client)
            if b is None:
                b = self._buckets[client] = _Bucket(cap, now)
                if len(self._buckets) > 10000:  # forget the oldest clients (a bucket refills in cap/rate s)
                    for k in sorted(self._buckets, key=lambda k: self._buckets[k].stamp)[:5000]:
                        del self._buckets[k]
            b.tokens = min(cap, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
            if b.tokens < 1:
                wait = (1 - b.tokens) / self.rate
                raise RateLimitedError(f"more than {self.rate:g} requests per second: wait {wait:.2f} s and retry "
                                       "(the server's --rate-limit)")
            b.tokens -= 1
