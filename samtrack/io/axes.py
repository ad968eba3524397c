"""Resolve a stack's axes (T, Z, C, Y, X, S, ...) into frames of shape (H, W, C).

Shared by the TIFF, zarr/OME-Zarr and numpy readers. The rule: never guess a
choice that changes the science. A Z stack needs ``z=``; more than three
channels need ``channels=`` (except RGBA colour, whose alpha is dropped); a
stack with no time axis and more than one plane needs ``time_axis=``.
:func:`resolve_axes` lists those choices without raising (``describe_source``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from samtrack.errors import AmbiguousAxesError, InvalidOptionError

_TIME_LIKE = ("T", "I", "Q")  # tifffile: I = image sequence, Q = unknown


@dataclass(frozen=True)
class AxesPlan:
    """How to cut frame ``t`` out of an N-d array with the given axes."""

    axes: str
    shape: tuple[int, ...]
    time_axis: int | None
    z_axis: int | None
    z: int
    channel_axis: int | None
    channels: tuple[int, ...]

    @property
    def n_frames(self) -> int:
        """Frames along the time axis (1 without one)."""
        return 1 if self.time_axis is None else self.shape[self.time_axis]

    @property
    def height(self) -> int:
        """Size of the Y axis, pixels."""
        return self.shape[self.axes.index("Y")]

    @property
    def width(self) -> int:
        """Size of the X axis, pixels."""
        return self.shape[self.axes.index("X")]

    @property
    def n_channels(self) -> int:
        """Channels per frame after selection."""
        return len(self.channels) if self.channels else 1

    def index(self, t: int) -> tuple:
        """The N-d index that cuts frame ``t`` (and the chosen Z plane) out of the array."""
        idx: list = []
        for a, (name, size) in enumerate(zip(self.axes, self.shape)):
            if a == self.time_axis:
                idx.append(t)
            elif a == self.z_axis:
                idx.append(self.z)
            elif name in ("Y", "X") or a == self.channel_axis:
                idx.append(slice(None))
            else:
                idx.append(0)
        return tuple(idx)

    def to_frame(self, block: np.ndarray) -> np.ndarray:
        """Turn the block read with :meth:`index` into (H, W, C)."""
        kept = [n for a, n in enumerate(self.axes) if n in ("Y", "X") or a == self.channel_axis]
        order = [kept.index("Y"), kept.index("X")]
        if self.channel_axis is not None:
            order.append(kept.index(self.axes[self.channel_axis]))
        out = np.transpose(block, order)
        if self.channel_axis is None:
            out = out[..., None]
        elif self.channels != tuple(range(self.shape[self.channel_axis])):
            out = out[..., list(self.channels)]
        return np.ascontiguousarray(out)

    def as_options(self) -> dict:
        """The reader options this plan stands for (part of the frame cache's signature)."""
        return {"axes": self.axes, "time_axis": None if self.time_axis is None else self.axes[self.time_axis],
                "z": self.z if self.z_axis is not None else None, "channels": list(self.channels)}


# python keyword of open_video / open_reader -> the samtrack CLI option that sets it
CLI_OPTIONS = {"z": "--z", "channels": "--channel", "time_axis": "--time-axis", "axes": "--axes"}


@dataclass(frozen=True)
class AxisChoice:
    """A choice a stack leaves to the user, and the option that makes it.

    ``keyword``: the reader option (``z``, ``channels``, ``time_axis``, ``axes``);
    ``option``: the CLI option; ``why``: the fact that forces the choice ("5 Z
    planes per time point"); ``range``: allowed indices (inclusive) or None;
    ``values``: allowed names (for ``time_axis``) or None; ``message``: the full
    error text :func:`plan_axes` raises.
    """

    keyword: str
    why: str
    message: str
    range: tuple[int, int] | None = None
    values: tuple[str, ...] | None = None

    @property
    def option(self) -> str:
        """The CLI option that makes this choice (``--z``, ``--channel``...)."""
        return CLI_OPTIONS[self.keyword]

    def to_dict(self) -> dict:
        """JSON-ready: option, keyword, why, and range ([lo, hi]) or values when they apply."""
        d: dict = {"option": self.option, "keyword": self.keyword, "why": self.why}
        if self.range is not None:
            d["range"] = list(self.range)
        if self.values is not None:
            d["values"] = list(self.values)
        return d


def plan_axes(axes: str, shape: Sequence[int], *, time_axis: str | None = None, z: int | None = None,
              channels: int | Sequence[int] | None = None, source: str = "stack",
              alpha_last: bool = False) -> AxesPlan:
    """Decide how to cut frames; :class:`AmbiguousAxesError` when a choice is left to the user.

    ``alpha_last``: the channel axis holds RGBA colour (a TIFF's ExtraSamples
    say so, or a uint8 array guessed as (T, H, W, 4)): with 4 channels and no
    ``channels=`` the alpha channel is dropped instead of asking.
    """
    plan, choices = resolve_axes(axes, shape, time_axis, z, channels, source, alpha_last)
    if choices:
        raise AmbiguousAxesError(choices[0].message)
    return plan


def axis_sizes(axes: str, shape: Sequence[int]) -> dict[str, int]:
    """{"T": 3, "Z": 5, "C": 2, "Y": 256, "X": 256} for the given axes and shape."""
    return {a: int(n) for a, n in zip(axes.upper(), shape)}


def _no_yx(axes: str, source: str) -> AxisChoice:
    return AxisChoice("axes", f"axes {axes!r} have no Y and X",
                      f"{source}: axes {axes!r} have no Y and X; pass axes='TYX' (or similar) to say which is which")


def resolve_axes(axes: str, shape: Sequence[int], time_axis: str | None = None, z: int | None = None,
                 channels: int | Sequence[int] | None = None, source: str = "stack",
                 alpha_last: bool = False) -> tuple[AxesPlan | None, list[AxisChoice]]:
    """The plan and the choices left open; the plan assumes the first answer to each choice.

    The plan is None only when the axes have no Y and X.
    """
    axes = axes.upper()
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise InvalidOptionError(f"{source}: axes {axes!r} do not match shape {shape}")
    if "Y" not in axes or "X" not in axes:
        return None, [_no_yx(axes, source)]
    choices: list[AxisChoice] = []
    t_ax = _pick_time_axis(axes, shape, time_axis, source, choices)
    z_ax, z_val = _pick_z(axes, shape, t_ax, z, source, choices)
    c_ax, chans = _pick_channels(axes, shape, channels, source, alpha_last, choices)
    for a, (name, size) in enumerate(zip(axes, shape)):
        if a in (t_ax, z_ax, c_ax) or name in ("Y", "X") or size == 1:
            continue
        choices.append(AxisChoice(
            "time_axis", f"axis {name!r} of size {size} is not time, Z, channel, Y or X",
            f"{source}: axis {name!r} of size {size} (axes {axes}, shape {shape}) is not time, Z, channel, Y or X; "
            "pass time_axis=... to say which axis is time", values=(name,)))
    return AxesPlan(axes, shape, t_ax, z_ax, z_val, c_ax, chans), choices


def _pick_time_axis(axes: str, shape: tuple[int, ...], time_axis: str | None, source: str,
                    choices: list[AxisChoice]) -> int | None:
    if time_axis is not None:
        time_axis = time_axis.upper()
        if time_axis not in axes:
            raise InvalidOptionError(f"{source}: time_axis={time_axis!r} is not one of its axes {axes!r}")
        return axes.index(time_axis)
    for name in _TIME_LIKE:
        if name in axes:
            return axes.index(name)
    if "Z" in axes and shape[axes.index("Z")] > 1:
        nz = shape[axes.index("Z")]
        choices.append(AxisChoice(
            "time_axis", f"no time axis but {nz} Z planes; if the planes are time points, time is Z",
            f"{source}: axes {axes} have no time axis but {nz} Z planes. "
            "If the planes are time points pass time_axis='Z'; samtrack tracks 2-D frames over time",
            values=("Z",)))
        return axes.index("Z")  # what the user would answer, to find the choices after this one
    return None


def _pick_z(axes, shape, t_ax, z, source, choices):
    if "Z" not in axes or axes.index("Z") == t_ax:
        if z not in (None, 0):
            raise InvalidOptionError(f"{source}: z={z} given but the stack has no Z axis (axes {axes})")
        return None, 0
    z_ax = axes.index("Z")
    nz = shape[z_ax]
    if z is None:
        if nz == 1:
            return z_ax, 0
        choices.append(AxisChoice("z", f"{nz} Z planes per time point",
                                  f"{source}: {nz} Z planes per time point; pick one with z=0..{nz - 1}",
                                  range=(0, nz - 1)))
        return z_ax, 0
    if not 0 <= z < nz:
        raise InvalidOptionError(f"{source}: z={z} is out of range 0..{nz - 1}")
    return z_ax, int(z)


def _pick_channels(axes, shape, channels, source, alpha_last, choices):
    present = [a for a, n in enumerate(axes) if n in ("C", "S") and shape[a] > 1]
    if len(present) > 1:
        choices.append(AxisChoice("axes", "both C and S axes hold several channels",
                                  f"{source}: both C and S axes hold several channels ({axes}, {shape}); "
                                  "convert to one channel axis, or pass axes=... naming one of them Z or T"))
        present = present[:1]
    if not present:
        c_ax = next((a for a, n in enumerate(axes) if n in ("C", "S")), None)
        if channels not in (None, 0, [0], (0,)):
            raise InvalidOptionError(f"{source}: channels={channels} given but the stack has one channel")
        return c_ax, (0,) if c_ax is not None else ()
    c_ax = present[0]
    nc = shape[c_ax]
    if channels is None:
        if nc <= 3:
            return c_ax, tuple(range(nc))
        if nc == 4 and alpha_last:
            return c_ax, (0, 1, 2)
        rgba = " (if they are RGBA colour, channels=[0, 1, 2] drops the alpha)" if nc == 4 else ""
        choices.append(AxisChoice("channels", f"{nc} channels; samtrack shows 1 to 3",
                                  f"{source}: {nc} channels; pick one to three with channels=[i, ...] (0..{nc - 1}){rgba}",
                                  range=(0, nc - 1)))
        return c_ax, tuple(range(3))
    chans = (channels,) if isinstance(channels, (int, np.integer)) else tuple(int(c) for c in channels)
    if not 1 <= len(chans) <= 3 or any(not 0 <= c < nc for c in chans):
        raise InvalidOptionError(f"{source}: channels={list(chans)} must be 1 to 3 indices in 0..{nc - 1}")
    return c_ax, chans
