"""A folder of images (JPEG/PNG/TIFF/BMP) with any names, in natural order."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from samtrack.errors import CorruptSourceError, DecodeError, EmptySourceError, MixedFrameSizeError
from samtrack.io.info import VideoInfo
from samtrack.io.readers.base import Reader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def list_images(folder: Path) -> list[Path]:
    from natsort import natsorted, ns

    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    return natsorted(files, key=lambda p: p.name, alg=ns.IGNORECASE)


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) in the file's own dtype; colour files come back RGB(A).

    Pillow, not OpenCV: OpenCV's libpng fails ("bad parameters to zlib") once
    PyAV's FFmpeg libraries are loaded in the same process.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
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
    return np.ascontiguousarray(img)


class ImageFolderReader(Reader):
    """Frames are the folder's images in natural sort order (``frame2`` before ``frame10``)."""

    name = "images"

    def __init__(self, folder, *, fps: float | None = None):
        from PIL import Image

        self.path = os.fspath(folder)
        self._fps = fps
        self.files = list_images(Path(folder))
        if not self.files:
            raise EmptySourceError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        sizes = []
        for f in self.files:  # headers only: PIL reads the size without decoding pixels
            try:
                with Image.open(f) as im:
                    sizes.append(im.size)
            except OSError as e:
                raise CorruptSourceError(f"{f}: unreadable image ({e}); remove or replace it",
                                         usable_frames=len(sizes)) from e
            if sizes[-1] != sizes[0]:
                raise MixedFrameSizeError(
                    f"{f} is {sizes[-1][0]}x{sizes[-1][1]} but {self.files[0].name} is "
                    f"{sizes[0][0]}x{sizes[0][1]}: all frames of a folder must have one size; "
                    "resize or remove it", path=str(f))
        first = read_image(self.files[0])
        self._dtype, self._channels = first.dtype, first.shape[2]
        self._info = VideoInfo(n_frames=len(self.files), height=first.shape[0], width=first.shape[1],
                               fps=fps, dtype=str(first.dtype), channels=first.shape[2],
                               rotation=0, reader=self.name)

    @property
    def info(self) -> VideoInfo:
        return self._info

    def options(self) -> dict:
        return {"files": len(self.files), "last": self.files[-1].name}

    def reopen(self) -> "ImageFolderReader":
        r = ImageFolderReader.__new__(ImageFolderReader)
        r.__dict__.update(self.__dict__)
        return r

    def read_raw(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        f = self.files[index]
        try:
            img = read_image(f)
        except OSError as e:
            raise DecodeError(f"{f}: cannot decode frame {index} ({e})", frame=index) from e
        if img.dtype != self._dtype or img.shape[2] != self._channels or img.shape[:2] != (self._info.height, self._info.width):
            raise DecodeError(
                f"{f}: frame {index} is {img.shape} {img.dtype}, the folder's first image is "
                f"{(self._info.height, self._info.width, self._channels)} {self._dtype}; convert it to match",
                frame=index)
        return img
