"""A folder of images (JPEG/PNG/TIFF/BMP) with any names, in natural order, shown as viewers show them.

Frames are upright (EXIF Orientation applied) and in one layout for the whole
folder, decided from the headers (see :mod:`samtrack.io.readers.image_layout`).
:func:`read_image` and :func:`read_label_image` read single files (mask prompts).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from samtrack.errors import DecodeError, EmptySourceError, MixedFrameSizeError, UnsupportedSourceError
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader
from samtrack.io.readers.image_layout import (ImageHeader, apply_orientation, decide_layout, decode_image,
                                              folder_rotation, pil_orientation, read_header, tiff_orientation,
                                              to_layout)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def list_images(folder: Path) -> list[Path]:
    from natsort import natsorted, ns

    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    return natsorted(files, key=lambda p: p.name, alg=ns.IGNORECASE)


def read_image(path: Path, *, upright: bool = False) -> np.ndarray:
    """(H, W, C) in the file's own dtype; colour files come back RGB(A), as stored.

    Raw values: a palette file comes back as RGB colours, RGBA keeps its alpha,
    gray + alpha becomes gray. ``upright=True`` applies the EXIF Orientation
    (as viewers show the file); the default leaves the stored orientation. For
    a label image's values (palette indices) use :func:`read_label_image`.

    Pillow, not OpenCV: OpenCV's libpng fails ("bad parameters to zlib") once
    PyAV's FFmpeg libraries are loaded in the same process.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(path)
        orientation = _tiff_orientation(path) if upright else 1
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            orientation = pil_orientation(im) if upright else 1
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                img = np.asarray(im).astype(np.uint16)
            elif im.mode in ("L", "RGB", "RGBA", "I", "F"):
                img = np.asarray(im)
            elif im.mode in ("LA", "PA"):
                img = np.asarray(im.convert("L"))
            else:  # palette, CMYK, 1-bit, YCbCr: explicit conversion to RGB
                img = np.asarray(im.convert("RGB"))
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(apply_orientation(img, orientation))


def read_label_image(path: Path) -> np.ndarray:
    """The raw label values of a mask / label image, upright (EXIF Orientation applied).

    Returns (H, W) for one-channel files: a palette PNG's palette *indices*
    (uint8, not its colours), gray (uint8), 16-bit (uint16), 32-bit (int32 /
    float32), 1-bit (uint8 0 / 1), a label TIFF's values in its own dtype.
    Colour files give (H, W, 3) values (alpha dropped). Raises
    :class:`UnsupportedSourceError` for a file that is not one 2-D image.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = np.squeeze(tifffile.imread(path))
        orientation = _tiff_orientation(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            orientation = pil_orientation(im)
            img = _pil_label_values(im)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[..., : img.shape[2] - 1]  # drop alpha
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise UnsupportedSourceError(
            f"{path}: a label image must be one 2-D plane (gray, palette or RGB), this one has shape {img.shape}; "
            "save the mask as a single-page PNG or TIFF")
    return np.ascontiguousarray(apply_orientation(img, orientation))


def _pil_label_values(im) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "L", "I", "F"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "1":
        return np.asarray(im).astype(np.uint8)
    if mode in ("PA", "LA", "La"):
        return np.asarray(im)[..., 0]
    if mode in ("RGB", "RGBA"):
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _tiff_orientation(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tiff_orientation(tif.pages[0])


class ImageFolderReader(Reader):
    """Frames are the folder's images in natural sort order (``frame2`` before ``frame10``).

    ``read_raw(i)`` -> (H, W, C) upright, in the folder's layout: uint8 x 3 for
    colour or mixed folders, uint8 x 1 for an all-gray folder, uint16 x 1 for
    16-bit gray (windowed for display like a 16-bit TIFF). ``fps``: the frame
    rate to report (an image folder has none of its own).
    """

    name = "images"

    def __init__(self, folder, *, fps: float | None = None):
        self.path = os.fspath(folder)
        self._fps = fps
        self.files = list_images(Path(folder))
        if not self.files:
            raise EmptySourceError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        self._headers = self._scan_headers()
        self._layout = decide_layout(self._headers)
        first = self._headers[0]
        for note in self._layout.notes:
            log.info("%s: %s", self.path, note)
        self._info = VideoInfo(n_frames=len(self.files), height=first.height, width=first.width,
                               fps=fps, dtype=self._layout.dtype, channels=self._layout.channels,
                               rotation=folder_rotation(self._headers), reader=self.name,
                               notes=self._layout.notes)

    def _scan_headers(self) -> list[ImageHeader]:
        """Every file's header (no pixels decoded); all must show at one displayed size."""
        headers: list[ImageHeader] = []
        for f in self.files:
            h = read_header(f)  # CorruptSourceError names the file
            first = headers[0] if headers else h
            if (h.width, h.height) != (first.width, first.height):
                turned = " once its EXIF orientation is applied" if h.orientation != first.orientation else ""
                raise MixedFrameSizeError(
                    f"{f} is {h.width}x{h.height}{turned} but {first.path.name} is "
                    f"{first.width}x{first.height}: all frames of a folder must have one size; "
                    "resize or remove it", path=str(f))
            headers.append(h)
        return headers

    @property
    def info(self) -> VideoInfo:
        return self._info

    def options(self) -> dict:
        return {"files": len(self.files), "last": self.files[-1].name, "upright": True,
                "layout": self._layout.name}

    def frame_names(self) -> list[str]:
        """The file names, in frame order."""
        return [f.name for f in self.files]

    def reopen(self) -> "ImageFolderReader":
        r = ImageFolderReader.__new__(ImageFolderReader)
        r.__dict__.update(self.__dict__)
        return r

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        header = self._headers[index]
        try:
            img = to_layout(decode_image(header), self._layout)
        except (OSError, ValueError) as e:  # PIL: truncated / broken data; tifffile: TiffFileError
            raise DecodeError(f"{header.path}: cannot decode frame {index} ({e})", frame=index) from e
        want = (self._info.height, self._info.width, self._info.channels)
        if img.shape != want or img.dtype != np.dtype(self._info.dtype):
            raise DecodeError(
                f"{header.path}: frame {index} is {img.shape} {img.dtype}, the folder's frames are "
                f"{want} {self._info.dtype}; was the file replaced? Open the folder again", frame=index)
        return img
