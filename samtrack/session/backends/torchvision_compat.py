"""Import ``torchvision`` even when its compiled ops do not match the installed torch.

Why: a torchvision wheel built for another torch (the PyPI 0.28.0 wheel, built against
CUDA torch, next to a CPU torch 2.13.0) cannot load its ``_C`` library. Its Python
fallbacks would still work (``roi_align`` has a pure-torch path), but ``import
torchvision`` itself fails with ``operator torchvision::nms does not exist``, because
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally; and ``torchvision.ops.nms`` (hence
``batched_nms``, which sam2's automatic mask generator and SAM3's detector use) asserts
that the compiled ops loaded before it calls ``torch.ops.torchvision.nms``.

What :func:`ensure_torchvision` does, only when that failure happens:

1. defines the ``torchvision::nms`` and ``torchvision::qnms`` operator schemas (torch.library)
   and gives ``nms`` a pure-torch kernel, :func:`greedy_nms`, for every device;
2. imports torchvision again (its Python fallbacks now load);
3. points ``torchvision.ops.nms`` and ``torchvision.ops.boxes.nms`` (the name
   ``batched_nms`` calls) at the registered op, skipping the compiled-ops assertion.

With matching wheels nothing is touched. Calling it again is free; the fallback is
logged once per process (INFO). Only modules under ``samtrack/session/backends/`` call it.
"""
from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType

import torch

from samtrack.errors import CheckpointError, InvalidOptionError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_READY: ModuleType | None = None  # the torchvision module once ensure_torchvision() succeeded
_LIB: torch.library.Library | None = None  # our registrations live as long as this object
_INSTALL = ("install the torchvision build that matches your torch "
            "(https://pytorch.org/get-started/locally/ lists the pairs)")


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, the contract of ``torchvision.ops.nms``.

    ``boxes``: (N, 4) float (x0, y0, x1, y1); ``scores``: (N,) float. Boxes are visited in
    descending score order (ties: the lower index first, a stable sort as torchvision's CPU
    kernel does); a box is dropped when its IoU with an already kept box is strictly greater
    than ``iou_threshold``. IoU = intersection / (area_i + area_j - intersection) in the input
    dtype, compared with the threshold in float64 (as the C++ kernel compares a float with a
    double). Returns (K,) int64 indices of the kept boxes, by descending score, on the input's
    device. Raises :class:`InvalidOptionError` for malformed shapes. The loop runs on the CPU
    (one small vector operation per kept box).
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise InvalidOptionError(f"nms needs boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and "
                                 f"{tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    x0, y0, x1, y1 = boxes.detach().cpu()[order].unbind(1)
    area = (x1 - x0) * (y1 - y0)
    alive = [True] * n
    keep: list[int] = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        w = (torch.minimum(x1[i], x1[i + 1:]) - torch.maximum(x0[i], x0[i + 1:])).clamp(min=0)
        h = (torch.minimum(y1[i], y1[i + 1:]) - torch.maximum(y0[i], y0[i + 1:])).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area[i + 1:] - inter)
        for j in torch.nonzero(iou.double() > iou_threshold).flatten().tolist():
            alive[i + 1 + j] = False
    return order[torch.tensor(keep, dtype=torch.int64)].to(boxes.device)


def _nms_through_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms`` without the compiled-ops assertion (see the module docstring)."""
    if boxes.is_quantized:
        raise InvalidOptionError(f"NMS on quantized boxes needs torchvision's compiled ops: {_INSTALL}")
    return torch.ops.torchvision.nms(boxes, scores, iou_threshold)


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_missing_ops() -> None:
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
    if not _op_exists("nms"):
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.impl("nms", greedy_nms, "CompositeExplicitAutograd")
    if not _op_exists("qnms"):  # schema only: torchvision registers its fake kernel at import
        _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _forget_failed_import() -> None:
    """Drop the submodules a failed ``import torchvision`` left behind, so the next import runs afresh."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _import_torchvision() -> tuple[ModuleType, bool]:
    """(torchvision, whether the op schemas had to be defined first)."""
    try:
        import torchvision

        return torchvision, False
    except ImportError as e:
        raise CheckpointError(f"torchvision is not installed ({e}): {_INSTALL}") from e
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise CheckpointError(f"torchvision cannot be imported ({e}): {_INSTALL}") from e
        first = e
    _forget_failed_import()
    _define_missing_ops()
    try:
        import torchvision
    except (ImportError, RuntimeError) as e:
        raise CheckpointError(f"torchvision cannot be imported ({first}; then, with samtrack's NMS "
                              f"registered: {e}): {_INSTALL}") from e
    return torchvision, True


def ensure_torchvision() -> ModuleType:
    """Import and return ``torchvision`` with working ``ops.nms`` / ``ops.batched_nms``.

    When torchvision's compiled ops load, this is a plain import. When they do not (a
    wheel built for another torch), the ``torchvision::nms`` op is registered with
    :func:`greedy_nms` as its kernel and the Python ``nms`` is routed to it, as the module
    docstring explains; logged once. Idempotent and thread-safe. Raises
    :class:`~samtrack.errors.CheckpointError` saying what to install when torchvision is
    missing or fails to import for another reason.
    """
    global _READY
    with _LOCK:
        if _READY is not None:
            return _READY
        tv, defined = _import_torchvision()
        if not tv.extension._has_ops():
            if not _op_exists("nms"):
                _define_missing_ops()
            tv.ops.boxes.nms = _nms_through_op  # batched_nms looks this name up when called
            tv.ops.nms = _nms_through_op
            log.info("torchvision %s's compiled ops did not load next to torch %s: NMS runs on samtrack's "
                     "pure-torch kernel%s; for the compiled ops, %s", tv.__version__, torch.__version__,
                     " (the torchvision::nms schema was registered first)" if defined else "", _INSTALL)
        _READY = tv
        return tv
