"""What a source *is*: one function decides whether stored work belongs to it.

Every store that keeps work computed from a source (the frame cache, the result
store, the memory bank, a job folder) records :func:`source_identity` and compares
it, through :func:`differences`, with the source it is opened with. Identity is
the resolved path plus a content signature, never a modification time (copying a
file keeps its work; replacing a recording with another of the same name and
frame count does not) and never ``id()`` of an in-memory array.

Content signatures (``content``: hex digest, blake2b-128):
- a file: its size and 1 MiB from its start, middle and end (a replaced video
  differs in its first megabyte: headers, first keyframe; reading 3 MiB of an
  hour-long recording costs milliseconds);
- a folder of images: every image file's name and size and 4 KiB from the start,
  middle and end of each (a frame rewritten with the same size is noticed; hidden
  files such as ``.DS_Store`` and files that are not images are ignored); a zarr
  folder: its array's samples, as an array;
- an array (numpy, zarr): every sample when it holds at most 512 MiB, else every
  k-th frame so that about 512 MiB is read; shape and dtype always.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = 1 << 20  # bytes read at each of three places of a file
FOLDER_SAMPLE = 4 << 10  # bytes read at each of three places of every image of a folder
ARRAY_BUDGET = 512 << 20  # bytes of an array hashed in full; larger arrays are sampled by frame


def _h():
    return hashlib.blake2b(digest_size=16)


def _file_digest(path: Path, h, sample: int = SAMPLE) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(off)
            h.update(f.read(sample))


def _array_digest(array: Any, h) -> None:
    shape = tuple(int(s) for s in array.shape)
    h.update(repr((shape, str(np.dtype(array.dtype)))).encode())
    if not shape:
        return
    nbytes = int(np.prod(shape)) * np.dtype(array.dtype).itemsize
    step = max(1, -(-nbytes // ARRAY_BUDGET))
    for i in range(0, shape[0], step):
        h.update(np.ascontiguousarray(np.asarray(array[i])).tobytes())
    if (shape[0] - 1) % step:
        h.update(np.ascontiguousarray(np.asarray(array[shape[0] - 1])).tobytes())


def source_identity(source: Any) -> dict:
    """{"path": resolved path or None, "kind": "file" | "folder" | "array", "content": digest}.

    JSON-serialisable; equal for the same content at the same place however the path is
    spelled (relative, absolute, through a symlink)."""
    h = _h()
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).resolve()
        if p.is_dir():
            if (p / "zarr.json").exists() or (p / ".zarray").exists() or (p / ".zgroup").exists():
                _zarr_digest(p, h)
                return {"path": str(p), "kind": "folder", "content": h.hexdigest()}
            from samtrack.io.readers.image_folder import IMAGE_EXTENSIONS

            files = sorted((e for e in os.scandir(p) if e.is_file() and not e.name.startswith(".")
                            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS), key=lambda e: e.name)
            for e in files:
                h.update(repr((e.name, e.stat().st_size)).encode())
                _file_digest(Path(e.path), h, sample=FOLDER_SAMPLE)
            return {"path": str(p), "kind": "folder", "content": h.hexdigest()}
        _file_digest(p, h)
        return {"path": str(p), "kind": "file", "content": h.hexdigest()}
    _array_digest(source, h)
    return {"path": None, "kind": "array", "content": h.hexdigest()}


def _zarr_digest(p: Path, h) -> None:
    """A zarr store folder: its array's samples decide (its chunk files are many and nested)."""
    import zarr

    node = zarr.open(str(p), mode="r")
    arrays = [node] if isinstance(node, zarr.Array) else [a for _, a in sorted(node.arrays())]
    for a in arrays[:1]:
        _array_digest(a, h)


def normalise(value: Any) -> Any:
    """A JSON round trip: tuples become lists, numpy scalars plain numbers, so stored and
    computed signatures compare equal."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def differences(stored: dict | None, current: dict) -> list[str]:
    """The top-level keys whose values differ (a key missing on one side counts), sorted."""
    if stored is None:
        return []
    a, b = normalise(stored), normalise(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


_WHAT = {"source": "the video's content or location", "reader_options": "the reader options",
         "model": "the model", "checkpoint": "the checkpoint", "image_size": "the image size",
         "n_frames": "the frame count", "intensity": "the intensity window"}


def describe_differences(keys: list[str], stored: dict, current: dict) -> str:
    """Readable text for :func:`differences` (what changed, old -> new where short)."""
    parts = []
    for k in keys:
        old, new = stored.get(k), current.get(k)
        if k == "source" and isinstance(old, dict) and isinstance(new, dict):
            what = ("the video's content changed" if old.get("path") == new.get("path")
                    else f"another video ({old.get('path') or 'an array'} -> {new.get('path') or 'an array'})")
        elif k == "checkpoint" and isinstance(old, dict) and isinstance(new, dict):
            what = f"another checkpoint ({old.get('name')} -> {new.get('name')})"
        else:
            short = len(json.dumps(normalise(old))) + len(json.dumps(normalise(new))) < 80
            what = _WHAT.get(k, k) + (f" ({old} -> {new})" if short else " changed")
        parts.append(what)
    return "; ".join(parts)
