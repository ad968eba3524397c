"""Exporters: one small module per format, each reading a ResultStore.

Every export writes to a temporary name and renames into place; an existing
output is replaced only with ``force=True``; frames not computed or stale stop
the export (listed) unless ``allow_incomplete=True``. Label exports (ctc, tiff,
png, npy, zarr) flatten overlapping objects by one rule, the smaller object on
top (:mod:`samtrack.io.export.labels`). :func:`export` returns an
:class:`ExportReport`; its warnings are also logged (library code never prints).

A format module has ``write(store, path, *, log: ExportLog, progress, frames, **options)``.
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from samtrack.errors import SamtrackError
from samtrack.io.result_store import ResultStore, Status

log = logging.getLogger(__name__)

FORMATS = {"zarr": "zarr_labels", "tiff": "tiff", "png": "png", "npy": "npy", "mp4": "mp4", "coco": "coco",
           "ytvis": "ytvis", "ctc": "ctc"}


class ExportError(SamtrackError, ValueError):
    """An export that cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    ``path``: the output; ``frames``, ``objects``: how many were exported;
    ``hidden``: {object: frames, ascending} where the object's mask is non-empty but
    none of its pixels is in the output (covered by smaller objects, or, in CTC, a
    mother's masks dropped at a division); ``warnings``: one sentence each, also logged.
    """

    path: Path
    format: str
    frames: int
    objects: int
    hidden: dict[int, tuple[int, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def summary(self) -> str:
        """One line: what was written, and how many warnings."""
        s = f"wrote {self.path} ({self.format}: {self.frames} frames, {self.objects} objects)"
        return s + (f", {len(self.warnings)} warning(s)" if self.warnings else "")


class ExportLog:
    """What a format module noticed while writing (collected, then reported by :func:`export`):
    objects covered by smaller ones, masks dropped on purpose (with the reason), warnings."""

    def __init__(self) -> None:
        self.covered: dict[int, set[int]] = {}  # object -> frames with no visible pixel
        self.dropped: dict[int, set[int]] = {}  # object -> frames whose mask was left out on purpose
        self.warnings: list[str] = []

    def hide(self, obj: int, frame: int) -> None:
        """``obj`` has mask pixels on ``frame`` but all are covered by smaller objects."""
        self.covered.setdefault(int(obj), set()).add(int(frame))

    def drop(self, obj: int, frames, why: str) -> None:
        """``obj``'s masks on ``frames`` are left out; ``why`` becomes a warning."""
        self.dropped.setdefault(int(obj), set()).update(int(f) for f in frames)
        self.warn(why)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def hidden_frames(self) -> dict[int, tuple[int, ...]]:
        objs = sorted(set(self.covered) | set(self.dropped))
        return {o: tuple(sorted(self.covered.get(o, set()) | self.dropped.get(o, set()))) for o in objs}

    def all_warnings(self) -> tuple[str, ...]:
        covered = [f"object {o}: no visible pixel on frames {ranges(f)} (covered by smaller objects)"
                   for o, f in sorted(self.covered.items())]
        return tuple(self.warnings + covered)


def incomplete_frames(store: ResultStore) -> dict[int, list[int]]:
    """{object: frames not computed or stale}."""
    out = {}
    for oid in store.object_ids:
        st = store.status(oid)
        bad = np.flatnonzero((st == Status.NOT_RUN) | (st == Status.STALE))
        if bad.size:
            out[oid] = bad.tolist()
    return out


def ranges(frames) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (at most 8 runs)."""
    frames = sorted(frames)
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
        raise ExportError(f"{path} exists: pass force=True to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder {path.parent} for {path.name} ({e}); choose another output") from e
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



DEFAULT_NAMES = {"zarr": "labels.zarr", "tiff": "labels.tif", "png": "png", "npy": "labels.npy", "mp4": "overlay.mp4",
                 "coco": "coco.json", "ytvis": "ytvis.json", "ctc": "ctc"}


def default_name(fmt: str) -> str:
    """The file or folder name a job's own export of ``fmt`` gets inside the job folder."""
    return DEFAULT_NAMES.get(fmt, fmt)


def export(store: ResultStore, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False,
           progress: Callable[[int, int], None] | None = None, frames=None, **options) -> ExportReport:
    """Write ``store`` as ``fmt`` to ``output`` and say what was written.

    ``fmt``: one of :data:`FORMATS`. ``frames``: the source's FrameStore (needed by mp4;
    gives frame names and timestamps to coco, ytvis and tiff). ``options`` go to the
    format (coco/ytvis: ``frames_dir=`` writes the video's frames as JPEG there).
    Raises :class:`ExportError` (unknown format, incomplete frames, existing output).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not allow_incomplete:
        bad = incomplete_frames(store)
        if bad:
            detail = "; ".join(f"object {o}: frames {ranges(f)}" for o, f in bad.items())
            raise ExportError(f"frames not computed or stale ({detail}); propagate them first, or pass "
                              "allow_incomplete=True to export them as empty")
    mod = importlib.import_module(f"samtrack.io.export.{FORMATS[fmt]}")
    output = Path(output)
    notes = ExportLog()
    if not store.object_ids:
        notes.warn("the result has no objects: every exported frame is empty")
    try:
        with atomic_output(output, force=force) as tmp:
            mod.write(store, tmp, log=notes, progress=progress, frames=frames, force=force, **options)
    except PermissionError as e:
        raise ExportError(f"cannot write {output} ({e}); choose a folder you can write to") from e
    except OSError as e:
        if isinstance(e, SamtrackError):
            raise
        raise ExportError(f"writing {output} failed ({e}); check the path and free disk space") from e
    report = ExportReport(output, fmt, store.n_frames, len(store.object_ids), notes.hidden_frames(),
                          notes.all_warnings())
    for w in report.warnings:
        log.warning("%s export %s: %s", fmt, output, w)
    return report
