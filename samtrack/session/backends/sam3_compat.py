"""Everything ``sam3`` 0.1.4 needs to import and run outside a CUDA machine, in one place.

Each item is scoped to what needs it and has a test that fails without it
(``tests/test_sam3_compat.py``). Only the SAM3 backend's modules use this one.

Applied once, when the SAM3 backend is imported (:func:`ensure_importable`, idempotent):

1. **torchvision**: ``sam3.model.decoder`` imports ``torchvision.ops.roi_align`` at module
   level; a torchvision wheel built for another torch cannot import at all. Handled by
   :func:`samtrack.session.backends.torchvision_compat.ensure_torchvision` (shared with SAM2).
2. **triton**: ``sam3.model.edt`` imports ``triton`` at module level, reached through
   ``sam3_tracker_utils`` from the tracker. Its one function (a Triton distance transform)
   serves training-time point sampling only. When ``triton`` is not installed, that module is
   replaced by a placeholder whose function raises a clear error; ``triton`` itself is not
   faked (torch checks for it elsewhere).
3. **connected components on an empty batch** (``sam3.perflib.connected_components``, fixed
   upstream in PR #258): the CPU path stacks an empty list. Wrapped so that an empty batch
   gives empty labels and counts (the detector's hole filling meets it when nothing is found).

Used around the model by the backend:

4. **``.cuda()`` on stored memory**: ``Sam3TrackerBase._prepare_memory_conditioned_features``
   calls ``prev["maskmem_features"].cuda()`` and ``prev["maskmem_pos_enc"][-1].cuda()`` on every
   memory it reads. The backend hands it :class:`OnDevice` holders whose ``cuda()`` returns the
   tensor where it already is (no global patch; any device works, CPU and ``cuda:1`` included).
5. **``pin_memory()``**: ``Sam3TrackerBase._get_tpos_enc`` pins a small index tensor on every
   step, which raises on a machine without an accelerator. :func:`no_pinning` makes
   ``Tensor.pin_memory`` return the tensor itself while the backend's step runs, only on such a
   machine (:data:`CAN_PIN` is False); elsewhere it does nothing.
6. **``device="cuda"`` at build and plain-attribute tensors**: ``PositionEmbeddingSine``
   precomputes its cache on ``"cuda"``, the detector's decoder its box coordinates on ``"cuda"``,
   and ``RoPEAttention`` keeps ``freqs_cis`` as a plain attribute made on CUDA when present.
   The builder (``sam3_build``) builds those two with no precomputation and then
   :func:`place` makes the same caches, for the chosen image size, on the model's device (the
   values are functions of shapes only: equal to what upstream precomputes).
7. **a global bf16 autocast**: ``Sam3TrackerPredictor.__init__`` enters
   ``torch.autocast("cuda", bfloat16)`` and never leaves it, so building the model would switch
   bf16 autocast on for the rest of the building thread (every later model, SAM2's too, on a
   GPU). :func:`release_autocast` leaves it again right after the build; the backend enters
   bf16 autocast itself around its own steps on CUDA, as upstream's notebooks run it.
8. **the video path's explicit bf16 casts**: upstream's detector buffers the tracker's image
   features as bf16 (``sam3_image.py``, for multi-GPU gathers), which meets fp32 weights on the
   CPU. The backend does not take that path: it runs the shared image encoder once and keeps
   the tracker's and the detector's features in the encoder's own dtype.

For running upstream's own predictor on the CPU (tests and ``bench/vs_upstream.py``),
:func:`upstream_on` additionally routes ``Tensor.cuda()`` to the chosen device while it is
active (the predictor calls it on frames, logits and memory).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import types
from typing import Any

import torch

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_DONE = False
EDT_PLACEHOLDER = "samtrack: sam3.model.edt placeholder (triton is not installed)"


def _can_pin() -> bool:
    try:
        torch.empty(1).pin_memory()
        return True
    except RuntimeError:
        return False


CAN_PIN = _can_pin()  # False on a machine without an accelerator: pin_memory() raises there


# -- 1-3: import time ---------------------------------------------------------------------
def ensure_importable() -> None:
    """Make ``import sam3`` work here (items 1-3 of the module docstring). Idempotent, thread-safe."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        from samtrack.session.backends.torchvision_compat import ensure_torchvision

        ensure_torchvision()
        install_edt_placeholder()
        with quiet_cpu_autocast():
            import sam3.model.sam3_tracking_predictor  # noqa: F401  (its decorators warn on a CPU machine)
            import sam3.model.sam3_video_inference  # noqa: F401
            import sam3.perflib.connected_components as cc

        patch_empty_connected_components(cc)
        route_sam3_logs()
        _DONE = True


@contextlib.contextmanager
def quiet_cpu_autocast():
    """Drop torch's "CUDA is not available ... Disabling autocast" UserWarning inside the block: sam3's
    CUDA autocast decorators and its tracker constructor raise it on every CPU import and build (the
    autocast is off there; the warning says nothing a user can act on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*Disabling autocast", category=UserWarning)
        yield


def route_sam3_logs() -> None:
    """sam3's ``get_logger`` gives each of its loggers its own stderr handler at INFO and stops
    propagation, so its messages ("setting max_num_objects=10000 ...") were printed by the library
    under samtrack's progress bars. Remove those handlers and let the records propagate: the
    application's logging configuration decides (library code never prints). Idempotent."""
    import logging as _logging

    for name, lg in list(_logging.Logger.manager.loggerDict.items()):
        if not name.startswith("sam3") or not isinstance(lg, _logging.Logger):
            continue
        for h in list(lg.handlers):
            if type(h) is _logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
        lg.setLevel(_logging.NOTSET)


def install_edt_placeholder(*, force: bool = False) -> bool:
    """Put a placeholder ``sam3.model.edt`` in ``sys.modules`` when ``triton`` is missing (or
    ``force``); returns whether it did. Importing the real module would fail on ``import triton``."""
    if "sam3.model.edt" in sys.modules:
        return getattr(sys.modules["sam3.model.edt"], "__doc__", None) == EDT_PLACEHOLDER
    if importlib.util.find_spec("triton") is not None and not force:
        return False
    mod = types.ModuleType("sam3.model.edt", EDT_PLACEHOLDER)

    def edt_triton(data):  # noqa: ARG001  (same signature as upstream's)
        raise RuntimeError("sam3's Triton distance transform (sam3.model.edt) is only used to sample "
                           "correction clicks during training and needs `pip install triton` (a CUDA machine)")

    mod.edt_triton = edt_triton
    sys.modules["sam3.model.edt"] = mod
    log.debug("triton is not installed: sam3.model.edt is a placeholder (training-time only)")
    return True


def patch_empty_connected_components(cc_module) -> None:
    """Wrap ``cc_module.connected_components`` so that a batch of zero masks returns two empty
    int64 tensors of the input's shape instead of failing in ``torch.stack([])``. Idempotent."""
    original = cc_module.connected_components
    if getattr(original, "_samtrack_empty_batch", False):
        return

    def connected_components(input_tensor: torch.Tensor):
        if input_tensor.shape[0] == 0:
            shape = input_tensor.shape if input_tensor.dim() == 4 else (0, 1, *input_tensor.shape[-2:])
            empty = torch.zeros(shape, dtype=torch.int64, device=input_tensor.device)
            return empty, empty.clone()
        return original(input_tensor)

    connected_components._samtrack_empty_batch = True
    connected_components.__wrapped__ = original
    connected_components.__doc__ = original.__doc__
    cc_module.connected_components = connected_components


# -- 4-5: around the model's steps -----------------------------------------------------------
class OnDevice:
    """A stored tensor handed to upstream code that calls ``.cuda()`` on it: ``cuda()`` returns
    the tensor where it is (the backend has already put it on its device)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def cuda(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # noqa: ARG002
        return self.tensor


def _pin_is_identity(self, *args, **kwargs):  # noqa: ARG001
    return self


_PIN_STATE = threading.local()


@contextlib.contextmanager
def no_pinning(active: bool | None = None):
    """While active, ``Tensor.pin_memory()`` returns the tensor itself (default: only where pinning
    is impossible, :data:`CAN_PIN` False). Re-entrant; restores the method on exit."""
    if active is None:
        active = not CAN_PIN
    if not active:
        yield
        return
    depth = getattr(_PIN_STATE, "depth", 0)
    if depth == 0:
        _PIN_STATE.saved = torch.Tensor.pin_memory
        torch.Tensor.pin_memory = _pin_is_identity
    _PIN_STATE.depth = depth + 1
    try:
        yield
    finally:
        _PIN_STATE.depth -= 1
        if _PIN_STATE.depth == 0:
            torch.Tensor.pin_memory = _PIN_STATE.saved


@contextlib.contextmanager
def upstream_on(device: torch.device | str = "cpu"):
    """Run upstream's own predictor code on ``device`` (tests, benchmarks): ``Tensor.cuda()`` moves
    to ``device`` instead and pinning is skipped where impossible. Not for the backend, which never
    needs it; not thread-safe (it swaps a method of ``torch.Tensor`` for the duration)."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
        return
    saved = torch.Tensor.cuda

    def cuda(self, *args, non_blocking=False, **kwargs):  # noqa: ARG001
        return self.to(device, non_blocking=non_blocking)

    torch.Tensor.cuda = cuda
    try:
        with no_pinning():
            yield
    finally:
        torch.Tensor.cuda = saved


# -- 6-7: after the build -----------------------------------------------------------------
def release_autocast(tracker) -> None:
    """Leave the ``torch.autocast("cuda", bfloat16)`` that ``Sam3TrackerPredictor.__init__`` entered
    (call once, in the thread that built it, right after the build)."""
    ctx = getattr(tracker, "bf16_context", None)
    if ctx is not None and not getattr(tracker, "_samtrack_autocast_released", False):
        ctx.__exit__(None, None, None)
        tracker._samtrack_autocast_released = True


def place(model: torch.nn.Module, device: torch.device, image_size: int, stride: int = 14) -> None:
    """Put the tensors sam3 keeps outside parameters and buffers on ``device`` and make the caches
    upstream precomputes at build for ``image_size`` (see item 6). Call after ``model.to(device)``."""
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.sam.transformer import RoPEAttention

    for m in model.modules():
        if isinstance(m, RoPEAttention):
            m.freqs_cis = m.freqs_cis.to(device)
            if getattr(m, "use_rope_real", False):
                m.freqs_cis_real, m.freqs_cis_imag = m.freqs_cis.real, m.freqs_cis.imag
        elif isinstance(m, PositionEmbeddingSine):
            m.cache = {k: v.to(device) for k, v in m.cache.items()}
            if getattr(m, "_samtrack_precompute", None):
                res = m._samtrack_precompute
                for size in ((res // 4,) * 2, (res // 8,) * 2, (res // 16,) * 2, (res // 32,) * 2):
                    if size not in m.cache:
                        m.forward(torch.zeros((1, 1) + size, device=device))
                        m.cache[size] = m.cache[size].clone().detach()
        elif isinstance(m, TransformerDecoder) and getattr(m, "boxRPB", "none") != "none":
            f = image_size // stride
            m.compilable_cord_cache = m._get_coords(f, f, device)
            m.compilable_stored_size = (f, f)
            m.coord_cache = {k: tuple(t.to(device) for t in v) for k, v in m.coord_cache.items()}
