"""Sources in, frames out: readers, the zarr frame cache, result stores, exporters.

This package knows nothing about models and never imports napari or Qt.
"""
from __future__ import annotations

import os
from typing import Any

from samtrack.io.describe import describe_source
from samtrack.io.frame_store import FrameStore
from samtrack.io.info import StreamInfo, VideoInfo
from samtrack.io.normalize import Intensity
from samtrack.io.registry import open_reader

_STORE_OPTIONS = ("chunk_frames", "prefetch_chunks", "ram_chunks", "disk_budget_bytes")


def open_video(source: Any, *, workdir: str | os.PathLike | None = None, reader: str | None = None,
               intensity: Intensity | dict | None = None, **options) -> FrameStore:
    """Open any video-like source lazily and return its :class:`FrameStore`.

    ``source``: a video file (mp4/mov/avi/mkv/webm...), a folder of images, a
    TIFF stack, a zarr / OME-Zarr path or array, or a numpy array (T first).
    ``workdir``: where the frame cache lives (default: a per-source folder
    under ``~/.cache/samtrack``, or ``$SAMTRACK_CACHE_DIR``). ``reader``: force
    a reader by name. ``intensity``: how 16-bit / float data become display
    RGB (:class:`Intensity`). Other keyword options go to the reader (``z=``,
    ``channels=``, ``time_axis=``, ``axes=``, ``fps=``, ``stream=`` for a
    file with several video streams) or to the store
    (``chunk_frames``, ``prefetch_chunks``, ``ram_chunks``, ``disk_budget_bytes``).

    Nothing is decoded here except what the reader needs to describe the
    source; frames are decoded in the background when first read.
    """
    store_opts = {k: options.pop(k) for k in _STORE_OPTIONS if k in options}
    if isinstance(intensity, dict):
        intensity = Intensity(**intensity)
    rd = open_reader(source, reader=reader, **options)
    try:
        return FrameStore(source, rd, workdir=workdir, intensity=intensity, **store_opts)
    except BaseException:
        rd.close()
        raise


__all__ = ["FrameStore", "Intensity", "StreamInfo", "VideoInfo", "describe_source", "open_reader", "open_video"]
