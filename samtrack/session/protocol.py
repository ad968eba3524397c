"""The session interface the viewer, the CLI and scripts use: a local
:class:`~samtrack.session.session.TrackingSession` and a :class:`~samtrack.remote.client.RemoteSession`
(``samtrack serve``) both implement it.

Conventions are the local session's: frames are 0-based indices in decode order; points (x, y) in video
pixels, labels 1 positive / 0 negative; boxes (x0, y0, x1, y1); masks (H, W) bool at video resolution;
results are :class:`~samtrack.session.types.FrameResult`. Errors are the same typed errors
(:mod:`samtrack.errors`) with the same messages, whichever side computed them.

Only typing here (no model package is imported; the `samtrack.session` package itself imports torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from samtrack.session.types import FrameResult


@runtime_checkable
class FrameSource(Protocol):
    """The video as the viewer shows it: ``info`` (``n_frames``, ``height``, ``width``, ``fps``) and
    ``read(t)`` -> (H, W, 3) uint8 display pixels (16-bit stacks already windowed), ``source``, ``close()``."""

    info: object
    source: object

    def read(self, t: int) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class ResultView(Protocol):
    """Read access to a session's results (:class:`~samtrack.io.result_store.ResultStore` has it)."""

    n_frames: int

    @property
    def object_ids(self) -> list[int]: ...

    def object_meta(self, obj_id: int) -> dict: ...

    def status(self, obj_id: int) -> np.ndarray: ...  # (N,) uint8, io.result_store.Status

    def scores(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]: ...  # (N,) float32 object score, IoU

    def label_frame(self, frame: int) -> np.ndarray: ...  # (H, W) uint16/uint32 object ids, 0 background


@runtime_checkable
class Session(Protocol):
    """Open, prompt, propagate, correct, export, close: what both local and remote sessions offer."""

    n_frames: int
    height: int
    width: int
    frames: FrameSource
    results: ResultView
    workdir: Path  # where the session lives (on the server, for a remote one)

    @property
    def obj_ids(self) -> list[int]: ...

    @property
    def closed(self) -> bool: ...

    def add_object(self, obj_id: int, *, name: str | None = None, parent: int | None = None, color=None) -> None: ...

    def remove_object(self, obj_id: int) -> None: ...

    def keyframes(self, obj_id: int) -> list[int]: ...

    def prompt_at(self, frame: int, obj_id: int): ...

    def status(self, obj_id: int) -> np.ndarray: ...

    def add_points(self, frame: int, obj_id: int, points, labels, *, clear: bool = True) -> FrameResult: ...

    def add_box(self, frame: int, obj_id: int, box, *, points=None, labels=None) -> FrameResult: ...

    def add_mask(self, frame: int, obj_id: int, mask, *, label=None) -> FrameResult: ...

    def clear_prompts(self, frame: int, obj_id: int | None = None) -> None: ...

    def reset(self) -> None: ...

    def frame_result(self, frame: int, obj_ids=None) -> FrameResult: ...

    def propagate(self, direction: str = "forward", start: int | None = None, stop: int | None = None, *,
                  obj_ids=None, progress: Callable[[int, int], None] | None = None) -> Iterator[FrameResult]: ...

    def cancel(self) -> None: ...

    def flush(self) -> None: ...

    def export(self, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False, **options): ...

    def close(self) -> None: ...


__all__ = ["FrameSource", "ResultView", "Session"]
