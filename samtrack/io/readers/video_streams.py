"""What a container says about its video streams, and what the demux scan shows about timing."""
from __future__ import annotations

import numpy as np

from samtrack.errors import InvalidOptionError
from samtrack.io.info import StreamInfo

# a frame interval this much (relative to the median) away from another one is variable frame rate;
# 10 % leaves the 1-tick rounding of 1/1000 time bases (33 / 34 ms) and an iPhone clip's single 35 ms frame alone
VFR_SPREAD = 0.10


def stream_infos(container) -> tuple[StreamInfo, ...]:
    """Every video stream of an open PyAV container, as its header describes it."""
    out = []
    for k, s in enumerate(container.streams.video):
        cc = s.codec_context
        rate = s.average_rate or s.guessed_rate
        out.append(StreamInfo(index=k, container_index=int(s.index), codec=str(cc.name), width=int(cc.width or 0),
                              height=int(cc.height or 0), frames=int(s.frames) or None,
                              fps=round(float(rate), 4) if rate else None, pix_fmt=cc.pix_fmt))
    return tuple(out)


def select_stream(container, path: str, stream: int | None, stream_index: int | None):
    """(av stream, position among video streams) for the options given.

    ``stream``: position among the video streams (0-based), the user-facing
    option. ``stream_index``: FFmpeg's index among all streams (audio too).
    A wrong value raises :class:`InvalidOptionError` listing the streams.
    """
    videos = list(container.streams.video)
    if stream is not None and stream_index is not None:
        raise InvalidOptionError("give stream= (position among video streams) or stream_index=, not both")
    if stream_index is not None:
        found = [k for k, s in enumerate(videos) if s.index == stream_index]
        if not found:
            raise InvalidOptionError(f"{path}: stream_index={stream_index} is not a video stream; "
                                     f"{_listing(container)}")
        stream = found[0]
    stream = 0 if stream is None else stream
    if not isinstance(stream, (int, np.integer)) or isinstance(stream, bool) or not 0 <= stream < len(videos):
        raise InvalidOptionError(f"{path}: stream={stream!r} is not one of its video streams; {_listing(container)}")
    return videos[int(stream)], int(stream)


def _listing(container) -> str:
    infos = stream_infos(container)
    lines = "; ".join(s.describe() for s in infos)
    return f"it has {len(infos)} video stream(s): {lines}. Pass stream=0..{len(infos) - 1}"


def interval_note(pts: tuple[int, ...], time_base) -> str | None:
    """A variable-frame-rate note (min / max frame interval in ms) from the scanned timestamps, or None."""
    if len(pts) < 3 or not time_base:
        return None
    d = np.diff(np.asarray(pts, dtype=np.float64)) * float(time_base)
    lo, hi, mid = float(d.min()), float(d.max()), float(np.median(d))
    if mid <= 0 or (hi - lo) <= VFR_SPREAD * mid:
        return None
    return (f"variable frame rate: frame intervals from {lo * 1e3:.1f} to {hi * 1e3:.1f} ms "
            f"(median {mid * 1e3:.1f} ms); frames are indexed in presentation order, times are in timestamps()")


def depth_note(pix_fmt: str | None) -> str | None:
    """A note for video coded with more than 8 bits per sample (10/12-bit), or None."""
    if not pix_fmt:
        return None
    import av

    try:
        bits = max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, TypeError):
        return None
    if bits <= 8:
        return None
    return f"{bits}-bit video ({pix_fmt}): converted to 8-bit RGB for display and the model"
