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


TIME_BASE = Fraction(1, 90000)  # exact for ms, 1/25, 1001/30000 ... timestamps (the MPEG clock)


def frame_pts(times: np.ndarray | None, n: int, rate: Fraction) -> list[int]:
    """Presentation times in :data:`TIME_BASE` ticks: the source's timestamps when known (variable
    frame rate kept), else a constant ``rate``; strictly increasing (a repeated time is moved one tick)."""
    if times is None:
        secs = [Fraction(i) / rate for i in range(n)]
        pts = [round(s / TIME_BASE) for s in secs]
    else:
        pts = [round(float(s) / TIME_BASE) for s in times]
    for i in range(1, len(pts)):
        pts[i] = max(pts[i], pts[i - 1] + 1)
    return pts


def write(store, path, *, frames=None, fps: float | None = None, log=None, progress=None, **_):
    """``frames``: a FrameStore of the video (display pixels). Each overlay frame keeps the source
    frame's timestamp (``frames.timestamps()``), so a variable-frame-rate overlay stays in sync;
    ``fps`` forces a constant rate instead."""
    import av

    from samtrack.io.export.timing import frame_times

    if frames is None:
        from samtrack.io.export import ExportError

        raise ExportError("the mp4 overlay needs the video: pass frames=FrameStore (the CLI does)")
    n = store.n_frames
    cols = colors(store.object_ids)
    w, h = store.width + store.width % 2, store.height + store.height % 2  # yuv420p needs even sizes
    rate = Fraction(fps or frames.info.fps or 25).limit_denominator(1001)
    pts = frame_pts(None if fps else frame_times(frames, n), n, rate)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = TIME_BASE
        s.time_base = TIME_BASE
        s.options = {"crf": "20", "preset": "veryfast"}
        for t, img in frames.iter_frames():
            ov = overlay(img, {o: store.mask(t, o) for o in store.object_ids}, cols)
            if ov.shape[:2] != (h, w):
                ov = np.pad(ov, ((0, h - ov.shape[0]), (0, w - ov.shape[1]), (0, 0)))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(ov), format="rgb24")
            vf.pts, vf.time_base = pts[t], TIME_BASE
            for p in s.encode(vf):
                c.mux(p)
            if progress:
                progress(t + 1, n)
        for p in s.encode():
            c.mux(p)
