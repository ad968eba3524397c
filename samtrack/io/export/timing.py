"""Frame times and names that exports carry over from the source (FrameStore-like ``frames``).

``frames.timestamps()`` (seconds per frame, presentation time from the stream start,
or None) and ``frames.frame_names()`` (an image folder's file names, or None) are
optional: a FrameStore without them still exports, with times from a declared
constant rate (``info.fps``) and names made from the frame index.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def frame_times(frames, n: int) -> np.ndarray | None:
    """(n,) float64 seconds: the source's own timestamps when it has them, else ``index / fps``
    for a declared rate, else None (unknown)."""
    if frames is None:
        return None
    ts = getattr(frames, "timestamps", None)
    t = ts() if callable(ts) else None
    if t is not None and len(t) == n:
        return np.asarray(t, np.float64)
    fps = getattr(frames.info, "fps", None)
    return np.arange(n, dtype=np.float64) / fps if fps else None


def frame_interval(times: np.ndarray | None, frames=None) -> tuple[float | None, bool]:
    """(mean interval in seconds or None, whether the intervals vary by more than 1 ms)."""
    if times is not None and len(times) > 1:
        d = np.diff(times)
        mean = float((times[-1] - times[0]) / (len(times) - 1))
        return (mean if mean > 0 else None), bool(np.abs(d - mean).max() > 1e-3)
    fps = getattr(getattr(frames, "info", None), "fps", None)
    return (1.0 / fps if fps else None), False


def source_names(frames) -> list[str] | None:
    """An image folder's file names (as the reader lists them), else None."""
    fn = getattr(frames, "frame_names", None)
    names = fn() if callable(fn) else None
    return None if names is None else [Path(str(n)).name if Path(str(n)).is_absolute() else str(n) for n in names]


def video_stem(frames) -> str:
    """The name exports give a video's frame folder: the source file's stem ("video" if unknown)."""
    src = getattr(frames, "source", None)
    try:
        return Path(src).stem or "video"
    except TypeError:
        return "video"
