"""samtrack's own caches under ``$SAMTRACK_CACHE_DIR`` (default ``~/.cache/samtrack``): list and remove.

Default work folders fill this root silently (a frame cache per video opened
without a workdir, a session folder per video, model and image size), so users
need to see and reclaim them:

- ``frames/<key>``: frame caches of videos opened with :func:`samtrack.open_video` and no workdir;
- ``sessions/<key>``: sessions opened with :func:`samtrack.open_session` and no workdir
  (frame cache, memory, results: removing one loses its prompts and masks);
- ``checkpoints/``: downloaded model weights (one entry per file; listed, removed only when asked).

Job folders given with ``--out``/``workdir`` are the user's and are never touched here.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from samtrack.errors import SessionInUseError
from samtrack.io.cache_meta import default_cache_root
from samtrack.io.folder_lock import FolderLock


@dataclass(frozen=True)
class CacheEntry:
    """One removable item. ``bytes``: disk use; ``last_used``: newest modification time (epoch s);
    ``source``: what it was made from, when recorded."""

    kind: str  # "frames" | "sessions" | "checkpoints"
    path: Path
    bytes: int
    last_used: float
    source: str | None

    def to_dict(self) -> dict:
        """JSON-ready: kind, path, bytes, last_used (epoch seconds), source."""
        return {"kind": self.kind, "path": str(self.path), "bytes": self.bytes, "last_used": self.last_used,
                "source": self.source}


def _usage(p: Path) -> tuple[int, float]:
    if p.is_file():
        st = p.stat()
        return st.st_size, st.st_mtime
    total, newest = 0, p.stat().st_mtime
    for dirpath, _, files in os.walk(p):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


def _source_of(p: Path) -> str | None:
    for meta in (p / "frames.zarr" / "zarr.json", p / "results.zarr" / "zarr.json"):
        try:
            sig = json.loads(meta.read_text()).get("attributes", {}).get("signature") or {}
        except (OSError, ValueError):
            continue
        src = sig.get("source")
        if isinstance(src, dict):
            return src.get("path") or "<array>"
        if isinstance(src, str):
            return src
    return None


def list_caches(root: Path | None = None) -> list[CacheEntry]:
    """Every cache entry under ``root`` (default the cache root), largest first."""
    root = Path(root or default_cache_root())
    out = []
    for kind in ("frames", "sessions", "checkpoints"):
        d = root / kind
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            size, used = _usage(p)
            out.append(CacheEntry(kind, p, size, used, None if kind == "checkpoints" else _source_of(p)))
    return sorted(out, key=lambda e: -e.bytes)


def select(entries: list[CacheEntry], *, kinds=("frames", "sessions"), older_than_days: float | None = None,
           missing_source: bool = False) -> list[CacheEntry]:
    """Entries of ``kinds``; only those unused for ``older_than_days``, or (``missing_source``) whose
    source file no longer exists, when asked."""
    now = time.time()
    keep = []
    for e in entries:
        if e.kind not in kinds:
            continue
        if older_than_days is not None and now - e.last_used < older_than_days * 86400:
            continue
        if missing_source and (e.source is None or e.source == "<array>" or Path(e.source).exists()):
            continue
        keep.append(e)
    return keep


def remove(entries: list[CacheEntry]) -> tuple[int, list[CacheEntry]]:
    """Delete ``entries``; returns (bytes freed, entries kept because a session has the folder open).

    A session folder is taken out of the way holding its lock (:mod:`samtrack.io.folder_lock`): a session
    open on it (here or in another process) is never pulled from under it, and a session opened while it
    is removed gets a new, empty folder (the old one is renamed aside under the lock, then removed)."""
    freed, in_use = 0, []
    for e in entries:
        if e.path.is_dir():
            if e.kind == "sessions":
                lock = FolderLock(e.path)
                try:
                    lock.acquire(purpose="samtrack caches clean")
                except SessionInUseError:
                    in_use.append(e)
                    continue
                try:
                    target = _set_aside(e.path)
                finally:
                    lock.release()
            else:
                target = e.path
            shutil.rmtree(target, ignore_errors=True)
        else:
            e.path.unlink(missing_ok=True)
        freed += e.bytes
    return freed, in_use


def _set_aside(folder: Path) -> Path:
    """Rename ``folder`` (its lock held) to a hidden name beside it and return that; ``folder`` itself
    when renaming fails (then it is removed in place, under the lock). Removed in place, the lock file
    would go with the rest: an opener arriving then took a new lock in the same folder, and the removal
    went on deleting that session's files."""
    aside = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return folder
    return aside
