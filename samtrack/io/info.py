"""VideoInfo: what a reader tells about its source before any frame is decoded."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamInfo:
    """One video stream of a container, as the header describes it.

    ``index``: position among the file's *video* streams (0-based; what the
    reader option ``stream=`` takes). ``container_index``: FFmpeg's index among
    all streams (audio included). ``width`` x ``height``: coded size in pixels
    (before rotation metadata). ``frames`` and ``fps`` come from the header and
    are None when it does not say; only the selected stream is scanned.
    """

    index: int
    container_index: int
    codec: str
    width: int
    height: int
    frames: int | None = None
    fps: float | None = None
    pix_fmt: str | None = None

    def describe(self) -> str:
        parts = [f"{self.index}: {self.codec} {self.width}x{self.height}"]
        if self.frames:
            parts.append(f"{self.frames} frames")
        if self.fps:
            parts.append(f"{self.fps:g} fps")
        return ", ".join(parts)


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a source, as displayed.

    ``height`` x ``width`` are the displayed size (after rotation metadata is
    applied: a video's display matrix, an image's EXIF Orientation). ``dtype``
    and ``channels`` describe the *original* samples a reader returns from
    ``read_raw`` (uint8 x 3 for video; uint16 x 1 for a 16-bit TIFF channel;
    never 4: alpha is dropped); display frames are always uint8 RGB.
    ``rotation`` is the display rotation in degrees *clockwise* that was applied
    to the stored frames to show them upright (0, 90, 180, 270; a portrait
    iPhone clip is 90, a JPEG with EXIF Orientation 6 is 90), as the classic
    ``rotate`` tag says; a mirrored orientation adds a note.
    ``fps`` is the average rate (frames / duration); on variable-frame-rate video
    frame i is the i-th frame in presentation order, never ``t * fps`` (use
    ``Reader.timestamps()``). ``streams``: every video stream of a container
    file (empty for other sources). ``notes``: plain sentences about what was
    converted or is unusual (variable frame rate, 10-bit, alpha dropped...).
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
    streams: tuple[StreamInfo, ...] = field(default=())

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field (``streams`` as a list of dicts)."""
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        d["streams"] = [dataclasses.asdict(s) for s in self.streams]
        return d
