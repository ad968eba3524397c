"""(T, H, W) label array as .npy (uint16, or uint32 beyond 65,535 objects), written frame by frame."""
from __future__ import annotations

import numpy as np


def write(store, path, *, progress=None, **_):
    n = store.n_frames
    dtype = store.label_frame(0).dtype
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, store.height, store.width))
    for t in range(n):
        arr[t] = store.label_frame(t)
        if progress:
            progress(t + 1, n)
    arr.flush()
    del arr
