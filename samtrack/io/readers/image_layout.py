"""Single images as users see them: EXIF orientation, channel layouts, one layout per folder.

Every image viewer shows a phone JPEG upright by applying its EXIF Orientation
tag; samtrack does the same (``PIL.ImageOps.exif_transpose`` semantics), so a
prompt drawn on what the user saw lands on the right pixels.

Channel layouts reach the model as upstream's ``Image.convert("RGB")`` would
give them (alpha dropped, palette expanded, CMYK converted), except that
high-bit-depth single-channel data (16-bit PNG or TIFF, float TIFF) is kept as
it is so that it is windowed like a 16-bit stack instead of saturated.

The folder rule (:func:`decide_layout`), decided from the headers alone: when
every image has the same sample type and 1 to 3 channels after alpha is
dropped, frames keep it (uint16 x 1, uint8 x 1 gray, uint8 x 3...); otherwise
every frame becomes uint8 RGB: gray replicated, alpha dropped, palette
expanded, 16-bit scaled linearly ``round(v * 255 / 65535)``.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtrack.errors import CorruptSourceError, UnsupportedSourceError

TIFF_SUFFIXES = (".tif", ".tiff")
ORIENTATION_TAG = 0x0112  # EXIF / TIFF tag 274

# EXIF Orientation -> (clockwise display rotation, mirror note), as exiftool names them
ORIENTATIONS: dict[int, tuple[int, str | None]] = {
    1: (0, None),
    2: (0, "mirrored horizontally"),
    3: (180, None),
    4: (0, "mirrored vertically"),
    5: (270, "mirrored horizontally, then rotated 270 degrees clockwise"),
    6: (90, None),
    7: (90, "mirrored horizontally, then rotated 90 degrees clockwise"),
    8: (270, None),
}

# PIL mode -> (dtype, channels after alpha is dropped / palette expanded, has alpha)
_PIL_MODES: dict[str, tuple[str, int, bool]] = {
    "1": ("uint8", 1, False), "L": ("uint8", 1, False), "LA": ("uint8", 1, True), "La": ("uint8", 1, True),
    "P": ("uint8", 3, False), "PA": ("uint8", 3, True),
    "RGB": ("uint8", 3, False), "RGBX": ("uint8", 3, False), "RGBA": ("uint8", 3, True), "RGBa": ("uint8", 3, True),
    "CMYK": ("uint8", 3, False), "YCbCr": ("uint8", 3, False), "LAB": ("uint8", 3, False), "HSV": ("uint8", 3, False),
    "I;16": ("uint16", 1, False), "I;16L": ("uint16", 1, False), "I;16B": ("uint16", 1, False),
    "I;16N": ("uint16", 1, False), "I": ("int32", 1, False), "F": ("float32", 1, False),
}


def orientation_rotation(orientation: int) -> int:
    """Clockwise degrees an EXIF Orientation turns the stored image by (0, 90, 180, 270)."""
    return ORIENTATIONS.get(orientation, (0, None))[0]


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W[, C]) stored pixels -> as displayed for EXIF ``orientation`` 1-8 (a view when possible).

    Same result as ``PIL.ImageOps.exif_transpose``; unknown values leave ``a`` as is.
    """
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


@dataclass(frozen=True)
class ImageHeader:
    """What one image file's header says, without decoding its pixels.

    ``width`` x ``height``: displayed size (EXIF orientation applied).
    ``dtype`` / ``channels``: what :func:`decode_image` returns (alpha dropped,
    palette expanded, so ``channels`` is 1 to 3 for every common file).
    ``mode``: the PIL mode, or ``"tiff:<axes>"`` for TIFF read with tifffile.
    """

    path: Path
    width: int
    height: int
    dtype: str
    channels: int
    mode: str
    alpha: bool = False
    palette: bool = False
    orientation: int = 1

    @property
    def layout(self) -> tuple[str, int]:
        return self.dtype, self.channels


def read_header(path: Path) -> ImageHeader:
    """The :class:`ImageHeader` of ``path``; :class:`CorruptSourceError` when unreadable."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_header(path)
        return _pil_header(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL / tifffile parse errors
        if isinstance(e, UnsupportedSourceError):
            raise
        raise CorruptSourceError(f"{path}: unreadable image ({e}); remove or replace it") from e


def _pil_header(path: Path) -> ImageHeader:
    from PIL import Image

    with Image.open(path) as im:
        mode, (w, h) = im.mode, im.size
        orientation = pil_orientation(im)
    dtype, channels, alpha = _PIL_MODES.get(mode, ("uint8", 3, False))
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageHeader(path, w, h, dtype, channels, mode, alpha, mode in ("P", "PA"), orientation)


def pil_orientation(im) -> int:
    """EXIF Orientation (1-8) of an opened PIL image, loaded or not: no pixel is decoded.

    PNG keeps EXIF in an eXIf chunk; Pillow's ``getexif()`` would decode the
    whole image to look for one after the pixels, so only a chunk before them
    (where writers put it) is read here, and :func:`decode_image` uses this same
    value so that the header and the pixels always agree.
    """
    from PIL import Image

    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = im.getexif()
    try:
        value = int(exif.get(ORIENTATION_TAG, 1))
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENTATIONS else 1


def tiff_orientation(page) -> int:
    """The Orientation tag (274) of a tifffile page, 1 when absent or invalid."""
    tag = page.tags.get(274)
    try:
        value = int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENTATIONS else 1


def _tiff_axes(series) -> tuple[str, tuple[int, ...]]:
    kept = [(a, n) for a, n in zip(series.axes, series.shape) if n > 1 or a in "YX"]
    return "".join(a for a, _ in kept), tuple(n for _, n in kept)


def _tiff_header(path: Path) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        s, page = tif.series[0], tif.pages[0]
        axes, shape = _tiff_axes(s)
        dtype = "uint8" if s.dtype == np.bool_ else str(s.dtype)
        orientation = tiff_orientation(page)
        palette = int(page.photometric) == 3 and axes == "YX"
        extra = len(page.extrasamples or ())
    sample_axis = axes.replace("Y", "").replace("X", "")
    if axes == "YX":
        samples = 1
    elif axes in ("YXS", "SYX", "CYX", "YXC") and shape[axes.index(sample_axis)] <= 4:
        samples = shape[axes.index(sample_axis)]
    else:
        raise UnsupportedSourceError(
            f"{path}: a TIFF with axes {axes} and shape {shape} in an image folder; each image of a folder "
            "must be one 2-D plane (gray or RGB). Open a multi-page TIFF as a file (samtrack info FILE.tif)")
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    alpha = extra > 0 and samples in (2, 4)  # gray + alpha, RGB + alpha (declared as ExtraSamples)
    channels = 3 if palette else samples - alpha
    return ImageHeader(path, w, h, "uint8" if palette else dtype, channels, f"tiff:{axes}", alpha, palette, orientation)


def decode_image(header: ImageHeader) -> np.ndarray:
    """(H, W, C) displayed pixels of one file: upright, alpha dropped, palette expanded.

    dtype and C are ``header.dtype`` / ``header.channels`` (uint8 for 8-bit and
    1-bit files, uint16 for 16-bit, int32 / float32 for PIL's I / F modes).
    """
    if header.mode.startswith("tiff:"):
        img = _decode_tiff(header)
    else:
        img = _decode_pil(header.path)
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(apply_orientation(img, header.orientation))


def _decode_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode in ("L", "RGB", "I", "F"):
            return np.asarray(im)
        if mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)
        if mode in ("1", "LA", "La"):  # 1-bit -> 0 / 255; gray + alpha -> gray
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB"))  # RGBA, palette, CMYK, YCbCr...: as upstream does


def _decode_tiff(header: ImageHeader) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(header.path) as tif:
        s = tif.series[0]
        a = s.asarray()
        colormap = tif.pages[0].colormap if header.palette else None
        axes, shape = _tiff_axes(s)
    a = a.reshape(shape)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if axes in ("SYX", "CYX"):
        a = np.moveaxis(a, 0, -1)
    if colormap is not None:  # palette TIFF: (3, 2**bits) 16-bit colours -> 8-bit RGB, v // 256 as Pillow does
        cmap = colormap if colormap.max() <= 255 else colormap // 256
        return np.ascontiguousarray(cmap.astype(np.uint8)[:, a].transpose(1, 2, 0))
    if a.ndim == 3 and header.alpha:
        a = a[..., :header.channels]
    return a


@dataclass(frozen=True)
class FolderLayout:
    """The one layout every frame of a folder is delivered in, and what was done to get it."""

    dtype: str
    channels: int
    convert: bool  # True: frames are converted to uint8 RGB (the folder mixes layouts)
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.dtype}x{self.channels}" + ("-converted" if self.convert else "")


def decide_layout(headers: list[ImageHeader]) -> FolderLayout:
    """The folder's layout from every image's header (see the module docstring for the rule)."""
    notes = _header_notes(headers)
    kinds = collections.Counter(h.layout for h in headers)
    if len(kinds) == 1:
        dtype, channels = next(iter(kinds))
        if channels <= 3:
            if dtype != "uint8":
                notes.append(f"{'16-bit' if dtype == 'uint16' else dtype} samples: windowed to 8-bit for display "
                             "and the model (percentile window, see Intensity); originals kept for export")
            return FolderLayout(dtype, channels, False, tuple(notes))
        raise UnsupportedSourceError(
            f"{headers[0].path}: {channels} channels per image; convert the images to gray or RGB, "
            "or stack them into one TIFF and choose channels=")
    odd = next((h for h in headers if h.dtype not in ("uint8", "uint16")), None)
    if odd is not None:
        raise UnsupportedSourceError(
            f"{odd.path} holds {odd.dtype} samples but the folder mixes layouts "
            f"({_describe_kinds(kinds)}); convert the images to one type (e.g. all 16-bit or all 8-bit RGB)")
    notes.append(f"the images differ in layout ({_describe_kinds(kinds)}): every frame is converted to 8-bit RGB"
                 + ("; 16-bit images are scaled linearly (v * 255 / 65535)" if any(d == "uint16" for d, _ in kinds) else ""))
    return FolderLayout("uint8", 3, True, tuple(notes))


def to_layout(img: np.ndarray, layout: FolderLayout) -> np.ndarray:
    """(H, W, C) decoded image -> the folder's layout (uint8 RGB when ``layout.convert``)."""
    if not layout.convert:
        return img
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def _describe_kinds(kinds: collections.Counter) -> str:
    """'3 8-bit RGB, 2 16-bit gray' for a Counter of (dtype, channels)."""
    bits = {"uint8": "8-bit", "uint16": "16-bit"}
    names = {1: "gray", 3: "RGB"}
    return ", ".join(f"{n} {bits.get(d, d)} {names.get(c, f'{c}-channel')}" for (d, c), n in kinds.most_common())


def _header_notes(headers: list[ImageHeader]) -> list[str]:
    notes = []
    n = len(headers)
    turned = [h for h in headers if h.orientation != 1]
    if turned:
        kinds = collections.Counter(h.orientation for h in turned)
        parts = []
        for o, k in sorted(kinds.items()):
            rot, mirror = ORIENTATIONS[o]
            what = mirror or f"rotated {rot} degrees clockwise"
            parts.append(f"{k} of {n} images {what} (EXIF Orientation {o})")
        notes.append("EXIF orientation applied, frames are shown upright: " + "; ".join(parts))
    alpha = sum(h.alpha for h in headers)
    if alpha:
        notes.append(f"alpha channel dropped ({alpha} of {n} images)")
    palette = sum(h.palette for h in headers)
    if palette:
        notes.append(f"palette images expanded to RGB colours ({palette} of {n} images)")
    return notes


def folder_rotation(headers: list[ImageHeader]) -> int:
    """The clockwise rotation most images of a folder were turned by (0 when none)."""
    counts = collections.Counter(orientation_rotation(h.orientation) for h in headers)
    return counts.most_common(1)[0][0]
