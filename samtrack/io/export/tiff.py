"""ImageJ-compatible multi-page label TIFF (T, H, W) uint16 with the time axis (opens in Fiji as a time series).

Overlaps are flattened with the smaller object on top (:mod:`samtrack.io.export.labels`).
Pages are streamed from the result store (never the whole stack in RAM). The
frame interval goes into the ImageJ metadata (``finterval`` in seconds,
``tunit`` sec; ``unit`` is the spatial unit: ``pixel``, samtrack knows no pixel
size) when the source's timing is known; a variable frame rate is carried as
its mean interval, with a warning.
"""
from __future__ import annotations

from samtrack.io.export import ExportError
from samtrack.io.export.labels import flat_frames
from samtrack.io.export.timing import frame_interval, frame_times


def imagej_metadata(n: int, frames, log) -> dict:
    """``axes`` plus the frame interval when it is known."""
    md = {"axes": "TYX", "unit": "pixel"}
    dt, variable = frame_interval(frame_times(frames, n), frames)
    if dt:
        md.update(finterval=dt, tunit="sec")
        if variable:
            log.warn(f"the frame rate varies: the TIFF carries the mean frame interval {dt:.6g} s "
                     "(ImageJ stores one interval)")
    return md


def write(store, path, *, log, frames=None, progress=None, **_):
    import tifffile

    if max(store.object_ids, default=0) > 65535:
        raise ExportError("a 16-bit label TIFF holds object ids up to 65,535; export as ctc (renumbers), "
                          "zarr or npy instead")
    n, h, w = store.n_frames, store.height, store.width
    pages = (flat.labels for _, flat in flat_frames(store, log, dtype="uint16", progress=progress))
    tifffile.imwrite(path, data=pages, shape=(n, h, w), dtype="uint16", imagej=True,
                     metadata=imagej_metadata(n, frames, log), photometric="minisblack")
