"""The Reader contract every source backend implements."""
from __future__ import annotations

import abc
from typing import Iterator

import numpy as np

from samtrack.errors import FrameIndexError
from samtrack.io.info import VideoInfo


class Reader(abc.ABC):
    """Frame-accurate random access to one source.

    ``read_raw(i)`` returns frame ``i`` as ``(H, W, C)`` in the source's own dtype
    (uint8 RGB for video; uint16/float for microscopy), already rotated for display,
    with C in 1..3 (alpha is dropped, palettes expanded).
    ``iter_raw(start, stop)`` yields the same frames in order and is the fast path
    for sequential decoding. Readers are not thread-safe: use one per thread.
    """

    name: str = "reader"

    @property
    @abc.abstractmethod
    def info(self) -> VideoInfo: ...

    @abc.abstractmethod
    def read_raw(self, index: int) -> np.ndarray: ...

    def iter_raw(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        stop = self.info.n_frames if stop is None else stop
        for i in range(start, stop):
            yield self.read_raw(i)

    def timestamps(self) -> np.ndarray | None:
        """(n_frames,) float64 seconds: presentation time of each frame.

        Relative to the stream's start (frame 0 of a constant-rate source is at
        0.0). The default, for sources with a known ``fps``, is ``i / fps``;
        None when the source has no timing (an image folder without ``fps=``).
        """
        fps = self.info.fps
        if not fps:
            return None
        return np.arange(self.info.n_frames, dtype=np.float64) / float(fps)

    def frame_names(self) -> list[str] | None:
        """One name per frame (an image folder's file names, in frame order), else None."""
        return None

    def options(self) -> dict:
        """Reader options that change the pixels (part of the cache signature)."""
        return {}

    def reopen(self) -> "Reader":
        """A fresh, independent reader of the same source (for another thread)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.info.n_frames

    def check_index(self, index: int) -> int:
        n = self.info.n_frames
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
            raise FrameIndexError(
                f"frame {index!r} is out of range: this source has {n} frames (0..{n - 1})"
            )
        return int(index)
