"""Video containers (mp4/mov/avi/mkv/webm/...) through PyAV.

Frame ``i`` is the i-th frame in presentation order, found by a one-time demux
scan of packet timestamps (no decoding), so variable-frame-rate video is indexed
by frame, never by ``t * fps``. Random access seeks to the keyframe before the
wanted timestamp and decodes forward; reading in order never seeks.
"""
from __future__ import annotations

import bisect
import functools
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from samtrack.errors import CorruptSourceError, DecodeError, UnsupportedSourceError
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader
from samtrack.io.readers._alloc import keep_large_buffers
from samtrack.io.readers.video_streams import depth_note, interval_note, select_stream, stream_infos

log = logging.getLogger(__name__)

_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


@dataclass(frozen=True)
class ScanResult:
    """What the demux scan learnt: sorted frame timestamps and keyframe timestamps."""

    pts: tuple[int, ...]
    key_pts: tuple[int, ...]
    header_frames: int
    demux_error: str | None


def rotation_to_k(rotation_cw: int) -> int:
    """np.rot90 ``k`` (counter-clockwise quarter turns) for a clockwise display rotation."""
    return (-(rotation_cw // 90)) % 4


def frame_to_rgb(frame, reformatter=None) -> np.ndarray:
    """Explicit conversion of a decoded frame to (H, W, 3) uint8 RGB.

    The source colour range and matrix are passed to swscale, so full-range
    (yuvj / color_range=pc) and BT.709 sources keep their levels; 10-bit and
    4:2:2/4:4:4 inputs are converted by swscale as well.

    ``reformatter``: an ``av.video.reformatter.VideoReformatter`` kept across
    frames. ``frame.reformat`` makes a new swscale context (and its threads) for
    every frame; reusing one roughly halves the conversion time at 1080p.
    """
    reformat = frame.reformat if reformatter is None else functools.partial(reformatter.reformat, frame)
    kwargs = {}
    if int(frame.color_range) == _FULL_RANGE:
        kwargs["src_color_range"] = _FULL_RANGE
    cs = int(frame.colorspace)
    if cs not in (0, 2):  # 0 = RGB/identity, 2 = unspecified: leave swscale's default (BT.601)
        kwargs["src_colorspace"] = cs
    try:
        rgb = reformat(format="rgb24", dst_color_range=_FULL_RANGE, **kwargs)
    except (ValueError, TypeError):  # an exotic colorspace swscale cannot take
        rgb = reformat(format="rgb24")
    return rgb.to_ndarray()


class PyAVReader(Reader):
    """Frame-accurate reader of any container FFmpeg can demux.

    ``stream``: which video stream to read, by position among the file's video
    streams (0-based, default 0; audio and data streams are not counted).
    ``stream_index``: the same by FFmpeg's index among all streams.
    ``info.streams`` lists every video stream.
    """

    name = "pyav"

    def __init__(self, path: str | os.PathLike, *, stream: int | None = None, stream_index: int | None = None,
                 _scan: ScanResult | None = None):
        import av  # lazy: the registry imports readers only when needed

        self._av = av
        self.path = os.fspath(path)
        try:
            self._container = av.open(self.path)
        except av.error.InvalidDataError as e:
            raise CorruptSourceError(
                f"{self.path}: FFmpeg cannot parse this file ({e}). If it is an mp4 cut short "
                "before its index (moov atom) nothing is recoverable; re-export or re-copy it, "
                "or remux a partial recording with `ffmpeg -i in.mp4 -c copy -movflags faststart out.mp4`",
                usable_frames=0,
            ) from e
        except av.error.FFmpegError as e:
            raise CorruptSourceError(f"{self.path}: cannot open ({e})", usable_frames=0) from e
        if not self._container.streams.video:
            self._container.close()
            raise UnsupportedSourceError(f"{self.path}: the file has no video stream")
        try:
            self._stream, self._stream_pos = select_stream(self._container, self.path, stream, stream_index)
        except BaseException:
            self._container.close()
            raise
        self._stream.thread_type = "AUTO"
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()  # one swscale context per reader (and thread)
        keep_large_buffers()
        self._scan = _scan or self._demux_scan()
        self._index_of = {p: i for i, p in enumerate(self._scan.pts)}
        self._decoder: Iterator | None = None
        self._next = -1  # index the live decoder will yield next
        self._info = self._probe_info()

    # -- opening ------------------------------------------------------------
    def _demux_scan(self) -> ScanResult:
        av = self._av
        pts, keys, err = [], [], None
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0:
                    continue
                p = pkt.pts if pkt.pts is not None else pkt.dts
                if p is None:
                    raise UnsupportedSourceError(
                        f"{self.path}: packets carry no timestamps; remux it first "
                        "(`ffmpeg -i in -c copy out.mkv`) or convert to an image folder"
                    )
                pts.append(p)
                if pkt.is_keyframe:
                    keys.append(p)
        except av.error.FFmpegError as e:  # truncated or damaged: keep what was read
            err = str(e)
        header = int(self._stream.frames or 0)
        pts_sorted = tuple(sorted(set(pts)))
        if not pts_sorted:
            raise CorruptSourceError(f"{self.path}: no decodable video frames ({err or 'empty stream'})", usable_frames=0)
        return ScanResult(pts_sorted, tuple(sorted(set(keys))) or (pts_sorted[0],), header, err)

    def _probe_info(self) -> VideoInfo:
        notes: list[str] = []
        scan = self._scan
        n = len(scan.pts)
        suspicious = scan.demux_error is not None or (scan.header_frames and n < scan.header_frames)
        if suspicious:
            n = self._verify_tail()
            msg = (
                f"file is truncated or damaged: {n} of "
                f"{scan.header_frames or 'an unknown number of'} frames are usable"
            )
            notes.append(msg)
            log.warning("%s: %s", self.path, msg)
            self._scan = ScanResult(scan.pts[:n], tuple(k for k in scan.key_pts if k <= scan.pts[n - 1]), scan.header_frames, scan.demux_error)
            self._index_of = {p: i for i, p in enumerate(self._scan.pts)}
        elif scan.header_frames and scan.header_frames != n:
            notes.append(f"header says {scan.header_frames} frames, the scan found {n}: using {n}")
        first_frame = self._decode(0)
        first = frame_to_rgb(first_frame, self._reformatter)
        rot = int(round(-float(first_frame.rotation or 0))) % 360
        self._rot_k = rotation_to_k(rot)
        h, w = first.shape[:2]
        if rot in (90, 270):
            h, w = w, h
        fps = self._fps(n)
        streams = stream_infos(self._container)
        notes += self._stream_notes(len(streams))
        return VideoInfo(n_frames=n, height=h, width=w, fps=fps, dtype="uint8", channels=3,
                         rotation=rot, reader=self.name, notes=tuple(notes), streams=streams)

    def _stream_notes(self, n_streams: int) -> list[str]:
        """Other video streams, variable frame rate, more than 8 bits per sample."""
        notes = []
        if n_streams > 1:
            notes.append(f"{n_streams} video streams; reading stream {self._stream_pos} "
                         f"(pass stream=0..{n_streams - 1} to read another)")
        for note in (interval_note(self._scan.pts, self._stream.time_base),
                     depth_note(self._stream.codec_context.pix_fmt)):
            if note:
                notes.append(note)
        return notes

    def _fps(self, n: int) -> float | None:
        pts = self._scan.pts
        tb = self._stream.time_base
        if n > 1 and tb:
            span = float((pts[n - 1] - pts[0]) * tb)
            if span > 0:
                return round((n - 1) / span, 4)
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def _verify_tail(self) -> int:
        """Decode from the last keyframe to the end: how many frames really decode."""
        scan = self._scan
        count = 0
        for key in reversed(scan.key_pts):
            start = scan.pts.index(key)
            last = -1
            try:
                self._seek(key)
                for frame in self._container.decode(self._stream):
                    if frame.pts is not None and frame.pts in self._index_of:
                        last = max(last, self._index_of[frame.pts])
                count = last + 1
            except self._av.error.FFmpegError:
                count = max(count, last + 1)
            if count > start:
                break
        self._decoder, self._next = None, -1
        if count <= 0:
            raise CorruptSourceError(f"{self.path}: damaged, no frame decodes", usable_frames=0)
        return count

    # -- decoding -----------------------------------------------------------
    @property
    def info(self) -> VideoInfo:
        return self._info

    def options(self) -> dict:
        return {"stream": self._stream_pos}

    def reopen(self) -> "PyAVReader":
        r = PyAVReader.__new__(PyAVReader)
        r.__init__(self.path, stream=self._stream_pos, _scan=self._scan)
        return r

    def timestamps(self) -> np.ndarray:
        """(n_frames,) float64 seconds from the demux scan: (pts - stream start) * time_base.

        Frame ``i``'s presentation time relative to the stream's start time (its
        first timestamp when the header gives none); exact on variable-frame-rate video.
        """
        pts = np.asarray(self._scan.pts[: self._info.n_frames], dtype=np.int64)
        start = self._stream.start_time
        start = int(pts[0]) if start is None else int(start)
        tb = self._stream.time_base
        # ticks * num is exact in float64, so one division rounds like float(Fraction) (= float(frame.time))
        return (pts - start).astype(np.float64) * tb.numerator / tb.denominator

    def _seek(self, pts: int) -> None:
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoder = self._container.decode(self._stream)
        self._next = -1

    def _frames_from(self, index: int) -> Iterator[tuple[int, object]]:
        """Position the decoder so that it yields (index, frame) from ``index`` on."""
        pts = self._scan.pts
        if self._decoder is None or self._next != index:
            keys = self._scan.key_pts
            k = bisect.bisect_right(keys, pts[index]) - 1
            self._seek(keys[max(k, 0)])
            for _ in range(3):  # a bad index can land after the target: step back
                frame = self._next_frame()
                if frame is None or self._index(frame) <= index:
                    break
                k -= 1
                self._seek(keys[k] if k >= 0 else pts[0])
            if frame is not None:
                self._pending = frame
        while True:
            frame = getattr(self, "_pending", None)
            self._pending = None
            if frame is None:
                frame = self._next_frame()
            if frame is None:
                return
            i = self._index(frame)
            if i < index:
                continue
            self._next = i + 1
            yield i, frame

    def _next_frame(self):
        try:
            return next(self._decoder)
        except StopIteration:
            self._decoder, self._next = None, -1
            return None
        except self._av.error.FFmpegError as e:
            self._decoder, self._next = None, -1
            raise DecodeError(f"{self.path}: decode failed near frame {self._next}: {e}", frame=max(self._next, 0)) from e

    def _index(self, frame) -> int:
        i = self._index_of.get(frame.pts)
        if i is None:  # a timestamp the demuxer did not report: take the nearest
            i = min(max(bisect.bisect_left(self._scan.pts, frame.pts or 0), 0), len(self._scan.pts) - 1)
        return i

    def _decode(self, index: int):
        """The decoded av frame at ``index`` (coded orientation)."""
        for i, frame in self._frames_from(index):
            if i == index:
                return frame
            break
        raise DecodeError(f"{self.path}: frame {index} could not be decoded (the file may be damaged there)", frame=index)

    def _rotate(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(rgb, self._rot_k)) if self._rot_k else rgb

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        return self._rotate(frame_to_rgb(self._decode(index), self._reformatter))

    def iter_raw(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        n = self._info.n_frames
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return
        self.check_index(start)
        expect = start
        for i, frame in self._frames_from(start):
            if i != expect:
                raise DecodeError(f"{self.path}: frame {expect} is missing from the stream (damaged packet)", frame=expect)
            yield self._rotate(frame_to_rgb(frame, self._reformatter))
            expect += 1
            if expect >= stop:
                return
        if expect < stop:
            raise DecodeError(f"{self.path}: decoding stopped at frame {expect} of {n} (damaged file?)", frame=expect)

    def close(self) -> None:
        self._decoder = None
        self._container.close()
