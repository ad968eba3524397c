"""Overlay video: the frames with coloured masks, outlines and object ids, through PyAV (H.264)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from samtrack.io.export.png import davis_palette


def colors(obj_ids) -> dict[int, np.ndarray]:
    pal = np.array(davis_palette(), np.uint8).reshape(256, 3)
    return {o: pal[(o % 255) or 1] for o in obj_ids}


def overlay(frame: np.ndarray, masks: dict[int, np.ndarray], cols: dict, alpha: float = 0.5) -> np.ndarray:
    import cv2

    out = frame.astype(np.float32)
    for oid, m in masks.items():
        if m is None or not m.any():
            continue
        c = cols[oid].astype(np.float32)
        out[m] = out[m] * (1 - alpha) + c * alpha
    out = out.astype(np.uint8)
    for oid, m in masks.items():
        if m is None or not m.any():
            continue
        cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cnts, -1, tuple(int(v) for v in cols[oid]), 1)
        ys, xs = np.nonzero(m)
        cv2.putText(out, str(oid), (int(xs.mean()), int(ys.mean())), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.4, out.shape[0] / 600), (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write(store, path, *, frames=None, fps: float | None = None, progress=None, **_):
    """``frames``: a FrameStore of the video (display pixels)."""
    import av

    if frames is None:
        from samtrack.io.export import ExportError

        raise ExportError("the mp4 overlay needs the video: pass frames=FrameStore (the CLI does)")
    n = store.n_frames
    cols = colors(store.object_ids)
    w, h = store.width + store.width % 2, store.height + store.height % 2  # yuv420p needs even sizes
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps or frames.info.fps or 25).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for t, img in frames.iter_frames():
            ov = overlay(img, {o: store.mask(t, o) for o in store.object_ids}, cols)
            if ov.shape[:2] != (h, w):
                ov = np.pad(ov, ((0, h - ov.shape[0]), (0, w - ov.shape[1]), (0, 0)))
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(ov), format="rgb24")):
                c.mux(p)
            if progress:
                progress(t + 1, n)
        for p in s.encode():
            c.mux(p)
