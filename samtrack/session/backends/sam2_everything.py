""""Segment everything" on one frame with a SAM2/SAM2.1 model: sam2's automatic mask generator.

The object-creating prompt of SAM2 families (SAM3 has text and exemplar boxes): a grid of
single-point prompts over the frame, filtered by predicted IoU and stability, de-duplicated
by box NMS; every surviving mask becomes a :class:`Detection` the session can turn into a
new object. Runs upstream's ``SAM2AutomaticMaskGenerator`` on the backend's own model, so
its masks, boxes and scores are upstream's (``tests/test_sam2_everything.py`` checks).

Differences from calling upstream directly, all deliberate:

- ``points_per_side`` defaults to 16 (256 prompts), not upstream's 32 (1,024 prompts):
  4x fewer mask-decoder runs, which matters on the CPU. Small, dense objects (cells
  under ~1/32 of the frame side) need ``options={"points_per_side": 32}`` or more.
- the predicted-IoU threshold comes from ``request.threshold`` (default 0.5; upstream's
  ``pred_iou_thresh`` default is 0.8); see :func:`segment_everything`.
- boxes are (x0, y0, x1, y1) pixel edges (x1 = last mask column + 1), upstream's are XYWH
  with the last column inclusive; masks that are empty are dropped; output is sorted by score.
- upstream's image predictor hard-codes the backbone feature sizes of a 1024 px model;
  they are set from the model here, so that a model at another ``image_size`` works
  (at 1024 px the values are upstream's).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from samtrack.errors import InvalidOptionError, PromptError
from samtrack.session.backends.base import DetectRequest, Detection

log = logging.getLogger(__name__)

# samtrack's defaults; every other option is upstream's default (see SAM2AutomaticMaskGenerator)
DEFAULTS: dict[str, Any] = {"points_per_side": 16}
# the options a request may set, named as upstream's constructor arguments
OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
           "stability_score_offset", "mask_threshold", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
           "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area", "use_m2m",
           "multimask_output")
_POSITIVE_INT = ("points_per_side", "points_per_batch")
_NON_NEGATIVE_INT = ("crop_n_layers", "min_mask_region_area", "crop_n_points_downscale_factor")
# upper bounds that keep one request within a machine (points_per_side=10**6 asked for a 7 TiB grid):
# upstream's largest documented setting is 64 points per side and 1 crop layer
_AT_MOST = {"points_per_side": 128, "points_per_batch": 4096, "crop_n_layers": 3}


def generator_options(request: DetectRequest) -> dict[str, Any]:
    """Keyword arguments for ``SAM2AutomaticMaskGenerator`` from a request.

    ``pred_iou_thresh`` = ``request.threshold`` unless ``request.options`` names it (the
    option wins). Raises :class:`InvalidOptionError` for an unknown option, a threshold
    outside 0..1, or a count that is not a whole number in range."""
    opts = dict(request.options)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise InvalidOptionError(f"unknown 'everything' option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    out = {**DEFAULTS, "pred_iou_thresh": request.threshold, **opts}
    for k in _POSITIVE_INT + _NON_NEGATIVE_INT:
        v, low = out.get(k), 1 if k in _POSITIVE_INT else 0
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
            raise InvalidOptionError(f"'everything' option {k}={v!r}: use a whole number >= {low}")
        if v is not None and k in _AT_MOST and v > _AT_MOST[k]:
            raise InvalidOptionError(f"'everything' option {k}={v!r}: at most {_AT_MOST[k]} (more would not fit "
                                     "a machine's memory)")
    for k in ("pred_iou_thresh", "stability_score_thresh"):
        if k in out and not 0.0 <= float(out[k]) <= 1.0:
            raise InvalidOptionError(f"'everything' {'threshold' if k == 'pred_iou_thresh' else k}={out[k]!r}: "
                                     "use a value in 0..1")
    return out


def segment_everything(model, frame: np.ndarray, request: DetectRequest, *,
                       autocast: bool | None = None) -> list[Detection]:
    """Every object sam2's automatic mask generator finds on one frame.

    ``model``: a built SAM2/SAM2.1 model (a ``sam2.modeling.sam2_base.SAM2Base``, e.g.
    :attr:`Sam2Backend.model`), in eval mode, on any device. ``frame``: (H, W, 3) uint8 RGB at
    video resolution (``FrameStore.read``); the generator applies sam2's own image transforms
    (resize to ``image_size``, ImageNet mean/std), as upstream does.
    ``request.threshold`` is the predicted-IoU threshold (upstream ``pred_iou_thresh``: a mask
    is kept when its predicted IoU is strictly above it; 0 keeps all); ``request.options`` may
    set any of :data:`OPTIONS` (upstream's names and meaning), ``points_per_side`` defaults to
    16. ``autocast``: bf16 autocast on CUDA (None: on when the model is on CUDA).

    Returns detections sorted by score (descending; ties keep upstream's order): ``mask`` (H, W)
    bool, never empty; ``box`` (x0, y0, x1, y1) float video pixels enclosing the mask
    (``x1`` = last column + 1, so a one-pixel mask is (c, r, c + 1, r + 1)); ``score`` the
    model's predicted IoU; ``logits`` None. Raises :class:`PromptError` for a frame that is not
    (H, W, 3) uint8, :class:`InvalidOptionError` for bad options, and
    :class:`~samtrack.errors.CheckpointError` when torchvision cannot be imported.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise PromptError(f"'everything' needs an (H, W, 3) uint8 RGB frame (FrameStore.read gives one), got "
                          f"{frame.shape} {frame.dtype}")
    amg = make_generator(model, generator_options(request))
    on_cuda = next(model.parameters()).device.type == "cuda"
    use_autocast = on_cuda if autocast is None else (autocast and on_cuda)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
    with ctx, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anns = amg.generate(frame)
    for msg in sorted({str(w.message) for w in caught}):  # e.g. "no CUDA extension: holes not filled"
        log.info("sam2 automatic mask generator: %s", msg)
    dets = [_detection(a) for a in anns]
    dets = [d for d in dets if d is not None]
    dets.sort(key=lambda d: -d.score)  # stable
    log.debug("segment everything: %d masks on a %dx%d frame", len(dets), frame.shape[1], frame.shape[0])
    return dets


def make_generator(model, options: Mapping[str, Any]):
    """Upstream's ``SAM2AutomaticMaskGenerator`` on ``model`` with ``options`` (upstream's keyword
    names), with the backbone feature sizes set from the model (upstream assumes 1024 px)."""
    from samtrack.session.backends.torchvision_compat import ensure_torchvision

    ensure_torchvision()  # sam2's generator imports torchvision's batched_nms
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    amg = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **options)
    h, w = model.sam_prompt_encoder.image_embedding_size  # stride-16 level: (S/16, S/16)
    amg.predictor._bb_feat_sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w)]  # FPN strides 4, 8, 16
    return amg


def _detection(ann: Mapping[str, Any]) -> Detection | None:
    mask = np.asarray(ann["segmentation"], dtype=bool)  # (H, W): upstream upsamples to the frame's size
    if not mask.any():
        return None
    x, y, w, h = (float(v) for v in ann["bbox"])  # XYWH, last row/column inclusive
    return Detection(mask=mask, box=(x, y, x + w + 1.0, y + h + 1.0), score=float(ann["predicted_iou"]))
