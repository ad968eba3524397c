"""Optional faster mp4 decoding through decord (``pip install decord``).

decord indexes by its own frame table and ignores rotation metadata and
colour range, so this reader is used only when asked for (``reader="decord"``)
and refuses rotated video; PyAV remains the default.
"""
from __future__ import annotations

import os

import numpy as np

from samtrack.errors import CorruptSourceError, UnsupportedSourceError
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader


class DecordReader(Reader):
    name = "decord"

    def __init__(self, path):
        import decord

        self.path = os.fspath(path)
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=0)
        except decord.DECORDError as e:
            raise CorruptSourceError(f"{self.path}: decord cannot open it ({e}); try reader='pyav'") from e
        first = self._vr[0].asnumpy()
        rotation = _rotation(self.path)
        if rotation:
            raise UnsupportedSourceError(f"{self.path}: rotated video ({rotation} deg): decord ignores rotation; use reader='pyav'")
        self._info = VideoInfo(n_frames=len(self._vr), height=first.shape[0], width=first.shape[1],
                               fps=float(self._vr.get_avg_fps()) or None, dtype="uint8", channels=3,
                               rotation=0, reader=self.name)

    @property
    def info(self) -> VideoInfo:
        return self._info

    def reopen(self) -> "DecordReader":
        return DecordReader(self.path)

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        return self._vr[index].asnumpy()

    def iter_raw(self, start=0, stop=None):
        stop = self._info.n_frames if stop is None else stop
        for s in range(start, stop, 16):
            batch = self._vr.get_batch(list(range(s, min(s + 16, stop)))).asnumpy()
            yield from batch


def _rotation(path: str) -> int:
    import av

    with av.open(path) as c:
        frame = next(c.decode(video=0))
        return int(round(-float(frame.rotation or 0))) % 360
