"""VideoInfo: what a reader tells about its source before any frame is decoded."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a source, as displayed.

    ``height`` x ``width`` are the displayed size (after rotation metadata is
    applied). ``dtype`` and ``channels`` describe the *original* samples a reader
    returns from ``read_raw`` (uint8 x 3 for video; uint16 x 1 for a 16-bit TIFF
    channel); display frames are always uint8 RGB. ``rotation`` is the display
    rotation in degrees *clockwise* that was applied to the coded frames to show
    them upright (0, 90, 180, 270; a portrait iPhone clip is 90), as the classic
    ``rotate`` tag says.
    ``fps`` is the average rate (frames / duration); on variable-frame-rate video
    frame i is the i-th frame in presentation order, never ``t * fps``.
    """

    n_frames: int
    height: int
    width: int
    fps: float | None
    dtype: str
    channels: int
    rotation: int = 0
    reader: str = ""
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d
