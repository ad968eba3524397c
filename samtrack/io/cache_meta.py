"""What a frame cache is: where it lives by default, its signature, its shard size."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from samtrack import __version__
from samtrack.io.identity import normalise, source_identity
from samtrack.io.normalize import Intensity
from samtrack.io.readers.base import Reader

CACHE_FORMAT = 2  # 2: content identity instead of modification times


def default_cache_root() -> Path:
    """``$SAMTRACK_CACHE_DIR``, else ``~/.cache/samtrack``: where default frame caches, sessions and
    checkpoints live."""
    return Path(os.environ.get("SAMTRACK_CACHE_DIR", Path.home() / ".cache" / "samtrack"))


def source_signature(source: Any, reader: Reader, intensity: Intensity) -> dict:
    """What decides whether a frame cache may be reused: the source's identity
    (:func:`samtrack.io.identity.source_identity`: resolved path + content), the reader and
    its options, the intensity window, the cache format and the frame shape."""
    return normalise({"source": source_identity(source), "reader": reader.name,
                      "reader_options": reader.options(), "intensity": intensity.to_dict(),
                      "samtrack": __version__, "format": CACHE_FORMAT,
                      "shape": [reader.info.n_frames, reader.info.height, reader.info.width]})


def default_chunk_frames(height: int, width: int) -> int:
    return int(np.clip(round(32e6 / (height * width * 3)), 1, 32))  # ~32 MB shards: 5 frames at 1080p
