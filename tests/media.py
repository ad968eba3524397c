"""Synthetic test media whose frames carry their own index (a 12-bit block code).

Every generator writes real files through PyAV / tifffile / OpenCV, so the
readers under test never see data made by themselves.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

BITS = 12
BLOCK = 8


def frame_pattern(i: int, h: int, w: int, *, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: smooth colour background, a moving square, index bits on top."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    img[..., 2] = (40 + 10 * seed) % 256
    s = max(4, min(h, w) // 4)
    cx = (i * 3) % max(w - s, 1)
    cy = h // 2 - s // 2
    img[cy:cy + s, cx:cx + s] = (255, 255, 255)
    stamp_index(img, i)
    return img


def stamp_index(img: np.ndarray, i: int) -> None:
    for b in range(min(BITS, img.shape[1] // BLOCK)):
        v = 255 if (i >> b) & 1 else 0
        img[0:BLOCK, b * BLOCK:(b + 1) * BLOCK] = v


def read_index(img: np.ndarray) -> int:
    """The index burned into a decoded frame (robust to lossy coding)."""
    val = 0
    for b in range(min(BITS, img.shape[1] // BLOCK)):
        block = img[1:BLOCK - 1, b * BLOCK + 1:(b + 1) * BLOCK - 1]
        if block.mean() > 127:
            val |= 1 << b
    return val


def write_video(path: Path, n: int, w: int = 128, h: int = 96, *, fps: int = 25, codec: str = "libx264",
                pix_fmt: str = "yuv420p", faststart: bool = False, pts_ms: list[int] | None = None,
                rotation_cw: int = 0, gop: int = 10, frames: list[np.ndarray] | None = None,
                color_range: int | None = None, bframes: bool = True) -> Path:
    """Encode frames (default :func:`frame_pattern`) with PyAV.

    ``pts_ms``: explicit presentation times (variable frame rate).
    ``rotation_cw``: display rotation; the frames given are what is displayed,
    and the coded frames are rotated back so that a correct reader restores them.
    """
    import av

    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream(codec, rate=fps)
    disp_h, disp_w = h, w
    coded_w, coded_h = (h, w) if rotation_cw in (90, 270) else (w, h)
    stream.width, stream.height = coded_w, coded_h
    stream.pix_fmt = pix_fmt
    opts = {"g": str(gop)}
    if codec == "libx264":
        opts.update({"preset": "ultrafast" if not bframes else "veryfast", "crf": "12"})
        if not bframes:
            opts["bf"] = "0"
    stream.options = opts
    if color_range is not None:
        stream.codec_context.color_range = color_range
    if pts_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.time_base = Fraction(1, 1000)
    if rotation_cw:
        stream.set_display_rotation(-rotation_cw)
    for i in range(n):
        disp = frames[i] if frames is not None else frame_pattern(i, disp_h, disp_w)
        coded = np.rot90(disp, k=rotation_cw // 90) if rotation_cw else disp
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(coded), format="rgb24")
        if color_range is not None:
            vf.color_range = color_range
        if pts_ms is not None:
            vf.pts = pts_ms[i]
            vf.time_base = Fraction(1, 1000)
        for pkt in stream.encode(vf):
            container.mux(pkt)
    for pkt in stream.encode():
        container.mux(pkt)
    container.close()
    return path


def truncate(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def write_image_folder(folder: Path, names: list[str], w: int = 64, h: int = 48, ext: str = ".png") -> list[np.ndarray]:
    """Write ``frame_pattern(k)`` to ``names[k]``; return the frames in name order given."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for k, name in enumerate(names):
        img = frame_pattern(k, h, w)
        Image.fromarray(img).save(folder / (name + ext))
        frames.append(img)
    return frames


def uint16_stack(n: int = 6, h: int = 64, w: int = 80, *, low: int = 900, high: int = 5200, seed: int = 0) -> np.ndarray:
    """A microscopy-like (T, H, W) uint16 stack: dim background, a few bright cells."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w), np.uint16)
    for t in range(n):
        img = low + rng.normal(0, 40, (h, w))
        for c in range(3):
            cy, cx = 15 + 15 * c, 15 + 20 * c + 2 * t
            img += (high - low) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 40.0)
        out[t] = np.clip(img, 0, 65535).astype(np.uint16)
    return out


def kill_when(proc, ready, *, timeout: float = 300.0, poll: float = 0.005) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it ended first."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(poll)
    assert proc.poll() is None, "the process finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def write_multistream_mkv(path: Path, sizes=((64, 48, 10), (80, 64, 12)), *, first_index=(0, 100)) -> Path:
    """An mkv with an audio stream first, then one video stream per (w, h, n) in ``sizes``.

    Video stream k's frame i carries the burned index ``first_index[k] + i``.
    """
    import av

    c = av.open(str(path), "w")
    audio = c.add_stream("pcm_s16le", rate=8000)
    audio.layout = "mono"
    vids = []
    for w, h, _ in sizes:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "12", "g": "5"}
        vids.append(s)
    for i in range(max(n for _, _, n in sizes)):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 320), np.int16), format="s16", layout="mono")
        af.sample_rate, af.pts = 8000, i * 320
        for pkt in audio.encode(af):
            c.mux(pkt)
        for k, (s, (w, h, n)) in enumerate(zip(vids, sizes)):
            if i < n:
                img = frame_pattern(first_index[k] + i, h, w, seed=k)
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
    for s in [audio] + vids:
        for pkt in s.encode():
            c.mux(pkt)
    c.close()
    return path


def save_with_orientation(img, path: Path, orientation: int, **save_kw) -> Path:
    """Save a PIL image with EXIF Orientation ``orientation`` (JPEG APP1 or PNG eXIf)."""
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, **save_kw)
    return path


def pil_image(mode: str, k: int, w: int = 64, h: int = 48):
    """A PIL image in ``mode`` (RGB, RGBA, L, LA, P, 1, CMYK, I;16) whose content depends on ``k``."""
    from PIL import Image

    rgb = Image.fromarray(frame_pattern(k, h, w))
    if mode == "I;16":
        y, x = np.mgrid[0:h, 0:w]
        a = ((x * 1000 + y * 300 + k * 77) % 65536).astype(np.uint16)
        a[0:BLOCK, 0:BLOCK] = 65535
        return Image.fromarray(a)
    if mode == "P":
        return rgb.quantize(colors=64)
    if mode == "RGBA":
        im = rgb.convert("RGBA")
        im.putalpha(Image.fromarray(np.full((h, w), 128 + k, np.uint8)))
        return im
    return rgb.convert(mode)
