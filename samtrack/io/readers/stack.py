"""Readers of N-d stacks: TIFF (tifffile), zarr / OME-Zarr, and numpy arrays.

None of them loads the stack: TIFF is read page by page through tifffile's
zarr view, zarr chunks are read on demand, numpy arrays (or memory maps) are
sliced.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from samtrack.errors import CorruptSourceError, EmptySourceError, UnsupportedSourceError
from samtrack.io.axes import AxesPlan, plan_axes
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader

class _AxesReader(Reader):
    """Common part: an array-like + an :class:`AxesPlan`."""

    def _setup(self, array: Any, plan: AxesPlan, fps: float | None, label: str, notes=()) -> None:
        self._array = array
        self._plan = plan
        self._label = label
        if plan.n_frames == 0:
            raise EmptySourceError(f"{label}: the stack has no frames")
        self._info = VideoInfo(
            n_frames=plan.n_frames, height=plan.height, width=plan.width, fps=fps,
            dtype=str(np.dtype(array.dtype)), channels=plan.n_channels, rotation=0,
            reader=self.name, notes=tuple(notes),
        )

    @property
    def info(self) -> VideoInfo:
        return self._info

    def options(self) -> dict:
        return self._plan.as_options()

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        block = np.asarray(self._array[self._plan.index(index)])
        return self._plan.to_frame(block)


class TiffStackReader(_AxesReader):
    """Multi-page TIFF, BigTIFF, ImageJ hyperstacks and OME-TIFF."""

    name = "tiff"

    def __init__(self, path, *, time_axis: str | None = None, z: int | None = None,
                 channels: int | Sequence[int] | None = None, series: int = 0):
        import tifffile
        import zarr

        self.path = os.fspath(path)
        self._kw = dict(time_axis=time_axis, z=z, channels=channels, series=series)
        try:
            self._tif = tifffile.TiffFile(self.path)
            s = self._tif.series[series]
            store = s.aszarr(level=0) if s.is_pyramidal else s.aszarr()
            arr = zarr.open_array(store, mode="r")
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as e:
            raise CorruptSourceError(f"{self.path}: not a readable TIFF ({e})") from e
        plan = plan_axes(s.axes, s.shape, time_axis=time_axis, z=z, channels=channels, source=self.path)
        fps = None
        ij = self._tif.imagej_metadata or {}
        if ij.get("finterval"):
            fps = 1.0 / float(ij["finterval"])
        elif ij.get("fps"):
            fps = float(ij["fps"])
        self._setup(arr, plan, fps, self.path)

    def options(self) -> dict:
        return {**self._plan.as_options(), "series": self._kw["series"]}

    def reopen(self) -> "TiffStackReader":
        return TiffStackReader(self.path, **self._kw)

    def close(self) -> None:
        self._tif.close()


def _ome_axes(attrs: dict) -> tuple[str, str] | None:
    """(axes, path of full-resolution dataset) from OME-NGFF multiscales metadata."""
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        return None
    m = ms[0]
    axes = m.get("axes") or ["t", "c", "z", "y", "x"][-5:]
    names = "".join((a["name"] if isinstance(a, dict) else a)[0].upper() for a in axes)
    return names, m["datasets"][0]["path"]


class ZarrArrayReader(_AxesReader):
    """A zarr array (T first by default) or an OME-Zarr image group."""

    name = "zarr"

    def __init__(self, source, *, axes: str | None = None, time_axis: str | None = None,
                 z: int | None = None, channels: int | Sequence[int] | None = None):
        import zarr

        self._kw = dict(axes=axes, time_axis=time_axis, z=z, channels=channels)
        self.source = source
        label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "zarr array"
        try:
            node = zarr.open(source, mode="r") if isinstance(source, (str, os.PathLike)) else source
        except Exception as e:  # zarr raises several unrelated types for "not a zarr"
            raise UnsupportedSourceError(f"{label}: not a zarr store ({e})") from e
        if isinstance(node, zarr.Group):
            found = _ome_axes(dict(node.attrs))
            if found is None:
                raise UnsupportedSourceError(f"{label}: a zarr group without OME-NGFF 'multiscales'; pass the array inside it")
            ome_axes, path = found
            node = node[path]
            axes = axes or ome_axes
        axes = axes or _default_axes(node.shape, label)
        plan = plan_axes(axes, node.shape, time_axis=time_axis, z=z, channels=channels, source=label)
        self._setup(node, plan, None, label)

    def reopen(self) -> "ZarrArrayReader":
        return ZarrArrayReader(self.source, **self._kw)


class ArrayReader(_AxesReader):
    """An in-memory numpy array (or memory map), T first: (T, H, W) or (T, H, W, C)."""

    name = "numpy"

    def __init__(self, array: np.ndarray, *, axes: str | None = None, time_axis: str | None = None,
                 z: int | None = None, channels: int | Sequence[int] | None = None, fps: float | None = None):
        self._kw = dict(axes=axes, time_axis=time_axis, z=z, channels=channels, fps=fps)
        self.source = array
        axes = axes or _default_axes(array.shape, "array")
        plan = plan_axes(axes, array.shape, time_axis=time_axis, z=z, channels=channels, source="array")
        self._setup(array, plan, fps, "array")

    def reopen(self) -> "ArrayReader":
        return ArrayReader(self.source, **self._kw)


def _default_axes(shape: Sequence[int], label: str) -> str:
    if len(shape) == 3:
        return "TYX"
    if len(shape) == 4 and shape[-1] <= 4:
        return "TYXC"
    if len(shape) == 2:
        return "YX"
    raise UnsupportedSourceError(
        f"{label}: shape {tuple(shape)} is not (T, H, W) or (T, H, W, C<=4); pass axes='TCYX' (or similar)"
    )
