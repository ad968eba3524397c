"""Exporters: one small module per format, each reading a ResultStore.

Every export writes to a temporary name and renames into place; an existing
output is replaced only with ``force=True``; frames not computed or stale stop
the export (listed) unless ``allow_incomplete=True``.
"""
from __future__ import annotations

import importlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from samtrack.errors import SamtrackError
from samtrack.io.result_store import ResultStore, Status

FORMATS = {"zarr": "zarr_labels", "tiff": "tiff", "png": "png", "npy": "npy", "mp4": "mp4", "coco": "coco",
           "ytvis": "ytvis", "ctc": "ctc"}


class ExportError(SamtrackError, ValueError):
    """An export that cannot be written as asked; the message says what to change."""


def incomplete_frames(store: ResultStore) -> dict[int, list[int]]:
    """{object: frames not computed or stale}."""
    out = {}
    for oid in store.object_ids:
        st = store.status(oid)
        bad = np.flatnonzero((st == Status.NOT_RUN) | (st == Status.STALE))
        if bad.size:
            out[oid] = bad.tolist()
    return out


def _ranges(frames: list[int]) -> str:
    parts, start = [], None
    for i, f in enumerate(frames):
        if start is None:
            start = f
        if i + 1 == len(frames) or frames[i + 1] != f + 1:
            parts.append(f"{start}" if start == f else f"{start}-{f}")
            start = None
    return ", ".join(parts[:8]) + (" ..." if len(parts) > 8 else "")


@contextmanager
def atomic_output(path: Path, *, force: bool):
    """Yield a temporary path next to ``path``; move it into place on success."""
    path = Path(path)
    if path.exists() and not force:
        raise ExportError(f"{path} exists: pass --force (force=True) to replace it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def export(store: ResultStore, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False,
           progress: Callable[[int, int], None] | None = None, **options) -> Path:
    """Write ``store`` as ``fmt`` to ``output``. See :data:`FORMATS`; ``options`` go to the
    format (the mp4 overlay needs ``frames=`` the video's FrameStore)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not store.object_ids:
        raise ExportError("nothing to export: the result store has no objects")
    if not allow_incomplete:
        bad = incomplete_frames(store)
        if bad:
            detail = "; ".join(f"object {o}: frames {_ranges(f)}" for o, f in bad.items())
            raise ExportError(f"frames not computed or stale ({detail}); propagate them first, or pass "
                              "--allow-incomplete to export them as empty")
    mod = importlib.import_module(f"samtrack.io.export.{FORMATS[fmt]}")
    output = Path(output)
    with atomic_output(output, force=force) as tmp:
        mod.write(store, tmp, progress=progress, **options)
    return output
