"""What a frame cache is: where it lives by default, its signature, its shard size."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from samtrack import __version__
from samtrack.io.normalize import Intensity
from samtrack.io.readers.base import Reader

CACHE_FORMAT = 1


def default_cache_root() -> Path:
    return Path(os.environ.get("SAMTRACK_CACHE_DIR", Path.home() / ".cache" / "samtrack"))


def source_signature(source: Any, reader: Reader, intensity: Intensity) -> dict:
    """What decides whether a cache may be reused."""
    sig: dict = {"reader": reader.name, "reader_options": reader.options(), "intensity": intensity.to_dict(),
                 "samtrack": __version__, "format": CACHE_FORMAT,
                 "shape": [reader.info.n_frames, reader.info.height, reader.info.width]}
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).resolve()
        st = p.stat()
        if p.is_dir():  # a folder changes when any file in it changes
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(p) if e.is_file())
            sig.update(source=str(p), size=len(entries), mtime_ns=hashlib.sha1(repr(entries).encode()).hexdigest())
        else:
            sig.update(source=str(p), size=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        h = hashlib.sha1()
        for i in sorted({0, reader.info.n_frames // 2, reader.info.n_frames - 1}):
            h.update(np.ascontiguousarray(reader.read_raw(i)).tobytes())
        sig.update(source=f"<{type(source).__name__}>", size=reader.info.n_frames, mtime_ns=h.hexdigest())
    return sig


def default_chunk_frames(height: int, width: int) -> int:
    return int(np.clip(round(32e6 / (height * width * 3)), 1, 32))  # ~32 MB shards: 5 frames at 1080p
