"""The image records COCO and YouTube-VIS exports point at: names of frames that exist, and their times.

Image-folder sources: the folder's own file names. Other sources (video files,
TIFF stacks): ``<source stem>/<index:06d>.jpg``, written as JPEG under
``frames_dir`` when asked (the CLI's ``--write-frames`` passes the JSON's folder),
so that every ``file_name`` names a file. ``timestamp`` (seconds) when known.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtrack.io.export.timing import frame_times, source_names, video_stem


@dataclass(frozen=True)
class FrameFiles:
    """``names[i]``: the file name of frame i (relative to the image root); ``times``: seconds or None;
    ``own_files``: whether the names are the source's own files (False: they exist once written)."""

    names: tuple[str, ...]
    times: tuple[float, ...] | None
    own_files: bool


def frame_files(frames, n: int, log) -> FrameFiles:
    times = frame_times(frames, n)
    t = None if times is None else tuple(float(v) for v in times)
    if frames is None:
        log.warn("no frame store given: file names are frame indices that name no file (pass frames=)")
        return FrameFiles(tuple(f"{i:06d}.jpg" for i in range(n)), t, False)
    names = source_names(frames)
    if names is not None and len(names) == n:
        return FrameFiles(tuple(names), t, True)
    stem = video_stem(frames)
    return FrameFiles(tuple(f"{stem}/{i:06d}.jpg" for i in range(n)), t, False)


def write_frames(frames, files: FrameFiles, frames_dir, *, force: bool, log, quality: int = 95) -> None:
    """Write each display frame as JPEG at ``frames_dir / files.names[i]`` (folder renamed into place);
    ``frames_dir`` None: only warn when the names are not the source's own files."""
    from PIL import Image

    from samtrack.io.export import ExportError, atomic_output

    if files.own_files:
        if frames_dir is not None:
            log.warn("frames_dir ignored: the file names are the source folder's own images")
        return
    if frames_dir is None:
        if frames is not None:
            log.warn(f"file names such as {files.names[0] if files.names else '?'} name no file yet: "
                     "pass frames_dir= (CLI --write-frames) to write the frames as JPEG")
        return
    if frames is None:
        raise ExportError("writing the frames needs the video: pass frames=FrameStore")
    folder = Path(frames_dir) / Path(files.names[0]).parent
    with atomic_output(folder, force=force) as tmp:
        tmp.mkdir(parents=True)
        for i, img in frames.iter_frames():
            if i < len(files.names):
                Image.fromarray(np.ascontiguousarray(img)).save(tmp / Path(files.names[i]).name, quality=quality)
