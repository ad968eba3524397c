"""Array adapters that let napari slice a video without decoding it all."""
from __future__ import annotations

import numpy as np


class LazyVideo:
    """(T, H, W, 3) uint8 view of a FrameStore: napari reads only the frames it shows.

    Frames come from the chunked cache (decoded on first read), already mapped to
    display RGB with the stored contrast window, so 16-bit stacks show as the
    model sees them.
    """

    def __init__(self, frames):
        self._frames = frames
        info = frames.info
        self.shape = (info.n_frames, info.height, info.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        t, rest = key[0], key[1:]
        if isinstance(t, (int, np.integer)):
            return self._frames.read(int(t))[rest] if rest else self._frames.read(int(t))
        idx = range(self.shape[0])[t] if isinstance(t, slice) else np.asarray(t).ravel().tolist()
        out = np.stack([self._frames.read(int(i)) for i in idx]) if len(idx) else np.zeros((0, *self.shape[1:]), np.uint8)
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):  # napari should never need this; refuse a full decode
        raise TypeError("LazyVideo is not converted to a full array (that would decode every frame); slice it")
