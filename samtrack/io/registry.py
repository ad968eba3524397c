"""Choose a reader for a source. Readers are imported only when tried.

Each :class:`ReaderSpec` says which sources it claims (by kind and extension),
its priority, and what to install when its module is missing. A reader that
cannot handle a source raises :class:`UnsupportedSourceError` and the next is
tried; damage (:class:`CorruptSourceError`) is reported at once.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samtrack.errors import InvalidOptionError, SourceNotFoundError, UnsupportedSourceError
from samtrack.io.readers.base import Reader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderSpec:
    name: str
    module: str
    cls: str
    kinds: tuple[str, ...]  # "file", "dir", "array", "zarr"
    extensions: tuple[str, ...] = ()
    priority: int = 50  # lower is tried first
    install: str = ""
    auto: bool = True  # tried without being asked for by name

    def load(self) -> type[Reader]:
        return getattr(importlib.import_module(self.module), self.cls)


_VIDEO_EXT = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts", ".ogv")
READERS: tuple[ReaderSpec, ...] = (
    ReaderSpec("numpy", "samtrack.io.readers.stack", "ArrayReader", ("array",), priority=0),
    ReaderSpec("zarr", "samtrack.io.readers.stack", "ZarrArrayReader", ("zarr",), (".zarr", ".ome.zarr"), 5, "pip install zarr"),
    ReaderSpec("tiff", "samtrack.io.readers.stack", "TiffStackReader", ("file",), (".tif", ".tiff", ".btf", ".tf8"), 10, "pip install tifffile"),
    ReaderSpec("images", "samtrack.io.readers.image_folder", "ImageFolderReader", ("dir",), (), 20, "pip install opencv-python-headless pillow natsort"),
    ReaderSpec("pyav", "samtrack.io.readers.video_pyav", "PyAVReader", ("file",), _VIDEO_EXT, 30, "pip install av"),
    ReaderSpec("decord", "samtrack.io.readers.video_decord", "DecordReader", ("file",), _VIDEO_EXT, 40, "pip install decord", auto=False),
)


def _kind(source: Any) -> str:
    if isinstance(source, np.ndarray):
        return "array"
    if not isinstance(source, (str, os.PathLike)):
        mod = type(source).__module__
        if mod.startswith("zarr"):
            return "zarr"
        raise UnsupportedSourceError(
            f"cannot read a {type(source).__name__}: pass a path, a numpy array or a zarr array")
    p = Path(source)
    if not p.exists():
        raise SourceNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        if any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        return "dir"
    return "file"


def _candidates(source: Any, kind: str, reader: str | None) -> list[ReaderSpec]:
    if reader is not None:
        specs = [s for s in READERS if s.name == reader]
        if not specs:
            raise InvalidOptionError(f"unknown reader {reader!r}; choose one of {', '.join(s.name for s in READERS)}")
        return specs
    specs = [s for s in READERS if kind in s.kinds and s.auto]
    if kind == "file":
        name = str(source).lower()
        by_ext = [s for s in specs if any(name.endswith(e) for e in s.extensions)]
        # an unknown extension may still be a video FFmpeg recognises by content
        rest = [s for s in specs if s not in by_ext and s.name == "pyav"]
        specs = by_ext + rest
    return sorted(specs, key=lambda s: s.priority)


def resolve_source(source: Any) -> Any:
    """``source``, or the one TIFF file inside a folder that holds nothing else to read.

    A downloaded hyperstack often comes as ``name/stack.tif`` (plus a README):
    the folder is read as that stack, not as a one-image folder.
    """
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir() or _kind(source) != "dir":
        return source
    from samtrack.io.readers.image_folder import list_images

    images = list_images(Path(source))
    if len(images) == 1 and images[0].suffix.lower() in (".tif", ".tiff"):
        log.info("%s holds one TIFF file: reading it as a stack (%s)", source, images[0].name)
        return images[0]
    return source


def candidate_readers(source: Any, *, reader: str | None = None) -> list[ReaderSpec]:
    """The readers :func:`open_reader` would try for ``source`` (after :func:`resolve_source`), in order."""
    return _candidates(source, _kind(source), reader)


def open_reader(source: Any, *, reader: str | None = None, **options) -> Reader:
    """Open ``source`` with the first reader that can, passing it ``options``."""
    if reader != "images":
        source = resolve_source(source)
    kind = _kind(source)
    specs = _candidates(source, kind, reader)
    label = "array" if kind == "array" else str(source)
    tried: list[str] = []
    for spec in specs:
        try:
            cls = spec.load()
        except ImportError as e:
            tried.append(f"{spec.name}: not installed ({spec.install})")
            log.debug("reader %s unavailable: %s", spec.name, e)
            continue
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = set(options) - accepted
        if unknown:
            if reader is not None or len(specs) == 1:
                raise InvalidOptionError(f"reader {spec.name!r} takes no option(s) {sorted(unknown)}; it takes {sorted(accepted - {'path', 'folder', 'source', 'array', '_scan'})}")
            tried.append(f"{spec.name}: does not take {sorted(unknown)}")
            continue
        try:
            return cls(source, **options)
        except UnsupportedSourceError as e:
            tried.append(f"{spec.name}: {e}")
    hint = "convert it to mp4 (`ffmpeg -i IN -c:v libx264 OUT.mp4`), a TIFF stack or a folder of PNG images"
    raise UnsupportedSourceError(f"{label}: no reader can open it ({'; '.join(tried) or 'no reader for this kind'}). {hint}")
