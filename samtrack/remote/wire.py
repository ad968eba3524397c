"""What crosses the network between ``samtrack serve`` and a :class:`~samtrack.remote.client.RemoteSession`.

JSON only, no pickles and no dtype strings evaluated: masks travel as COCO RLE (pycocotools, column-major
as COCO defines it: ``{"size": [H, W], "counts": str}``), other arrays as zlib-compressed little-endian
bytes of a whitelisted dtype (:func:`encode_array`), errors as ``{"error": {"type": name, "message": str}}``
and re-raised on the client as the same samtrack error class (:func:`raise_error`).

About 450 B per frame for 2 objects at 512x512 (``SCALE-NOTES.md``) against ~0.5 MB of dense bool masks.
"""
from __future__ import annotations

import base64
import math
import zlib

import numpy as np

from samtrack import errors as _errors
from samtrack.session.types import FrameResult

ARRAY_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float32", "float64")


class WireError(_errors.SamtrackError, ValueError):
    """A message on the wire that does not decode (a client or server of another version, or a corrupt
    body): the message says which field."""


def encode_array(a: np.ndarray) -> dict:
    """``{"dtype", "shape", "zlib": base64}`` for an array of one of :data:`ARRAY_DTYPES` (little-endian, C order)."""
    a = np.asarray(a)
    if a.dtype.name not in ARRAY_DTYPES:
        raise WireError(f"arrays of dtype {a.dtype} are not sent; one of {', '.join(ARRAY_DTYPES)}")
    raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": a.dtype.name, "shape": list(a.shape), "zlib": base64.b64encode(zlib.compress(raw, 1)).decode()}


def decode_array(d: dict) -> np.ndarray:
    """Inverse of :func:`encode_array`; a dtype outside the whitelist or a size mismatch raises :class:`WireError`."""
    try:
        dtype, shape = d["dtype"], tuple(int(s) for s in d["shape"])
        if dtype not in ARRAY_DTYPES:
            raise WireError(f"array dtype {dtype!r} is not one of {', '.join(ARRAY_DTYPES)}")
        raw = zlib.decompress(base64.b64decode(d["zlib"]))
        a = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if a.size != math.prod(shape):
            raise WireError(f"array of shape {list(shape)} holds {a.size} values")
        return a.reshape(shape).astype(np.dtype(dtype), copy=False)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        raise WireError(f"an array on the wire does not decode: {e}") from e


def encode_masks(masks: np.ndarray) -> list[dict]:
    """(n, H, W) bool -> n COCO RLEs ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, bool)
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    """n COCO RLEs -> (n, H, W) bool; an RLE of another size raises :class:`WireError`."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, height, width), bool)
    try:
        objs = [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].encode("ascii")} for r in rles]
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise WireError(f"a mask on the wire is not a COCO RLE: {e}") from e
    for o in objs:
        if tuple(o["size"]) != (height, width):
            raise WireError(f"a mask of size {o['size']} for a {height}x{width} video")
    return np.ascontiguousarray(mask_utils.decode(objs).transpose(2, 0, 1).astype(bool))


def _floats(a) -> list:
    """Float scores as JSON (NaN, which JSON lacks, as null)."""
    return [None if not math.isfinite(float(v)) else float(v) for v in np.asarray(a, np.float64).ravel()]


def _unfloats(v) -> np.ndarray:
    return np.array([np.nan if x is None else float(x) for x in v], np.float32)


def encode_result(res: FrameResult, *, logits: bool = False) -> dict:
    """A :class:`FrameResult` as JSON: ``{"frame", "obj_ids", "masks": [RLE], "object_scores", "ious"}``, plus
    ``"logits"`` (:func:`encode_array` of the (n, H, W) float32 logits) only when asked."""
    d = {"frame": int(res.frame_idx), "obj_ids": [int(o) for o in res.obj_ids], "masks": encode_masks(res.masks),
         "object_scores": _floats(res.object_scores), "ious": _floats(res.ious)}
    if logits:
        d["logits"] = encode_array(np.asarray(res.logits, np.float32))
    return d


def decode_result(d: dict, height: int, width: int) -> FrameResult:
    """Inverse of :func:`encode_result`. Without logits on the wire, ``logits`` is +/-1 from the masks
    (its sign is the mask, as local logits' is; ask ``logits=True`` for the values)."""
    try:
        ids = [int(o) for o in d["obj_ids"]]
        masks = decode_masks(d["masks"], height, width)
        if "logits" in d:
            logits = decode_array(d["logits"]).astype(np.float32, copy=False)
        else:
            logits = np.where(masks, np.float32(1), np.float32(-1))
        if len(ids) != len(masks):
            raise WireError(f"{len(ids)} object ids and {len(masks)} masks")
        return FrameResult(int(d["frame"]), ids, masks, logits, _unfloats(d["object_scores"]), _unfloats(d["ious"]))
    except WireError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise WireError(f"a frame result on the wire does not decode: {e}") from e


# -- errors ---------------------------------------------------------------------------------------------------------
def error_body(exc: BaseException) -> dict:
    """``{"error": {"type": class name, "message": str}}`` (the message the local API gives)."""
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def error_class(name: str) -> type[_errors.SamtrackError]:
    """The samtrack error class called ``name`` (:mod:`samtrack.errors`, export and wire errors), else
    :class:`~samtrack.errors.SamtrackError`. Only classes of samtrack are looked up, never built from the name."""
    from samtrack.io.export import ExportError

    known = {c.__name__: c for c in vars(_errors).values()
             if isinstance(c, type) and issubclass(c, _errors.SamtrackError)}
    known.update(ExportError=ExportError, WireError=WireError)
    return known.get(name, _errors.SamtrackError)


def raise_error(body: dict, status: int | None = None) -> None:
    """Raise the error a server's error body describes, as the samtrack class it names."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        raise _errors.SamtrackError(f"the server answered {status}: {str(body)[:300]}")
    cls = error_class(str(err.get("type", "")))
    msg = str(err.get("message", ""))
    try:
        exc = cls(msg)
    except TypeError:  # an error class with required keyword fields: its message still says it all
        exc = _errors.SamtrackError(msg)
    raise exc
