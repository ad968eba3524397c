"""Readers of N-d stacks: TIFF (tifffile), zarr / OME-Zarr, and numpy arrays.

None of them loads the stack: TIFF is read page by page through tifffile's
zarr view, zarr chunks are read on demand, numpy arrays (or memory maps) are
sliced. Each reader first finds the array and its axes (:func:`locate_stack`,
also used by ``describe_source`` when the axes leave a choice), then plans
how to cut frames out of it (:func:`samtrack.io.axes.plan_axes`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from samtrack.errors import CorruptSourceError, EmptySourceError, UnsupportedSourceError
from samtrack.io.axes import AxesPlan, plan_axes
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader


@dataclass(frozen=True)
class StackSource:
    """An opened stack before its axes are planned.

    ``array``: the lazy array (zarr view, zarr array, numpy). ``axes``: one
    letter per dimension (T, Z, C, S, Y, X...). ``alpha_last``: the channel axis
    holds RGBA colour (TIFF ExtraSamples say so, or a guessed (T, H, W, 4) uint8
    array), so alpha may be dropped without asking. ``fps``: from the metadata,
    or None. ``handle``: a file to close (TiffFile) or None.
    """

    array: Any
    axes: str
    label: str
    alpha_last: bool = False
    fps: float | None = None
    handle: Any = None
    notes: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> str:
        return str(np.dtype(self.array.dtype))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def depth_note(dtype: np.dtype | str) -> str | None:
    """A note for samples that are not 8-bit (they are windowed, not cast, to 8-bit)."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return None
    kind = "float" if dt.kind == "f" else f"{dt.itemsize * 8}-bit"
    return (f"{kind} samples ({dt.name}): windowed to 8-bit for display and the model "
            "(percentile window per stack, see Intensity); originals kept for export")


class _AxesReader(Reader):
    """Common part: a :class:`StackSource` + an :class:`AxesPlan`."""

    def _setup(self, src: StackSource, plan: AxesPlan) -> None:
        self._array = src.array
        self._plan = plan
        self._label = src.label
        self._layout = src
        if plan.n_frames == 0:
            raise EmptySourceError(f"{src.label}: the stack has no frames")
        notes = list(src.notes)
        if src.alpha_last and plan.channel_axis is not None and src.shape[plan.channel_axis] == 4 \
                and 3 not in plan.channels:
            notes.append("RGBA colour: the alpha channel is dropped (pass channels=[...] to choose others)")
        deep = depth_note(src.dtype)
        if deep:
            notes.append(deep)
        self._info = VideoInfo(
            n_frames=plan.n_frames, height=plan.height, width=plan.width, fps=src.fps,
            dtype=src.dtype, channels=plan.n_channels, rotation=0,
            reader=self.name, notes=tuple(notes),
        )

    @property
    def info(self) -> VideoInfo:
        return self._info

    @property
    def layout(self) -> StackSource:
        """The stack as found (axes, shape, dtype) before a plane or channels were chosen."""
        return self._layout

    def options(self) -> dict:
        return self._plan.as_options()

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        block = np.asarray(self._array[self._plan.index(index)])
        return self._plan.to_frame(block)


def _plan(src: StackSource, time_axis, z, channels) -> AxesPlan:
    try:
        return plan_axes(src.axes, src.shape, time_axis=time_axis, z=z, channels=channels, source=src.label,
                         alpha_last=src.alpha_last)
    except BaseException:
        src.close()
        raise


class TiffStackReader(_AxesReader):
    """Multi-page TIFF, BigTIFF, ImageJ hyperstacks and OME-TIFF."""

    name = "tiff"

    def __init__(self, path, *, time_axis: str | None = None, z: int | None = None,
                 channels: int | Sequence[int] | None = None, series: int = 0):
        self.path = os.fspath(path)
        self._kw = dict(time_axis=time_axis, z=z, channels=channels, series=series)
        src = locate_tiff(self.path, series=series)
        self._tif = src.handle
        self._setup(src, _plan(src, time_axis, z, channels))

    def options(self) -> dict:
        return {**self._plan.as_options(), "series": self._kw["series"]}

    def reopen(self) -> "TiffStackReader":
        return TiffStackReader(self.path, **self._kw)

    def close(self) -> None:
        self._tif.close()


def locate_tiff(path: str, *, series: int = 0) -> StackSource:
    """Open a TIFF lazily: its series' zarr view, axes, RGBA flag and frame rate."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        raise CorruptSourceError(f"{path}: not a readable TIFF ({e})") from e
    try:
        s = tif.series[series]
        store = s.aszarr(level=0) if s.is_pyramidal else s.aszarr()
        arr = zarr.open_array(store, mode="r")
        page = tif.pages[0]
        alpha = "S" in s.axes and int(page.photometric) == 2 and bool(page.extrasamples)  # RGB + ExtraSamples
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as e:
        tif.close()
        raise CorruptSourceError(f"{path}: not a readable TIFF ({e})") from e
    fps = None
    ij = tif.imagej_metadata or {}
    if ij.get("finterval"):
        fps = 1.0 / float(ij["finterval"])
    elif ij.get("fps"):
        fps = float(ij["fps"])
    return StackSource(arr, s.axes, path, alpha_last=alpha, fps=fps, handle=tif)


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
        self._kw = dict(axes=axes, time_axis=time_axis, z=z, channels=channels)
        self.source = source
        src = locate_zarr(source, axes=axes)
        self._setup(src, _plan(src, time_axis, z, channels))

    def reopen(self) -> "ZarrArrayReader":
        return ZarrArrayReader(self.source, **self._kw)


def locate_zarr(source, *, axes: str | None = None) -> StackSource:
    """Open a zarr array or OME-Zarr group lazily and find its axes."""
    import zarr

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
    return _guessed(node, axes, label)


class ArrayReader(_AxesReader):
    """An in-memory numpy array (or memory map), T first: (T, H, W) or (T, H, W, C)."""

    name = "numpy"

    def __init__(self, array: np.ndarray, *, axes: str | None = None, time_axis: str | None = None,
                 z: int | None = None, channels: int | Sequence[int] | None = None, fps: float | None = None):
        self._kw = dict(axes=axes, time_axis=time_axis, z=z, channels=channels, fps=fps)
        self.source = array
        src = locate_array(array, axes=axes, fps=fps)
        self._setup(src, _plan(src, time_axis, z, channels))

    def reopen(self) -> "ArrayReader":
        return ArrayReader(self.source, **self._kw)


def locate_array(array: np.ndarray, *, axes: str | None = None, fps: float | None = None) -> StackSource:
    src = _guessed(array, axes, "array")
    return StackSource(src.array, src.axes, src.label, src.alpha_last, fps)


def _guessed(array, axes: str | None, label: str) -> StackSource:
    """Axes as given, else guessed from the shape; a guessed (T, H, W, 4) uint8 is RGBA."""
    if axes:
        return StackSource(array, axes.upper(), label)
    guess = _default_axes(array.shape, label)
    rgba = guess.endswith("C") and array.shape[-1] == 4 and np.dtype(array.dtype) == np.uint8
    return StackSource(array, guess, label, alpha_last=rgba)


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
