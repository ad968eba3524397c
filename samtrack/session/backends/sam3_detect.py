"""SAM3's detector on one frame: a text ("cell") and/or exemplar boxes -> :class:`Detection` records.

:func:`detect` runs the detector of the backend's own model (``Sam3ImageOnVideoMultiGPU``, a
``Sam3Image``) the way upstream's video model runs it when ``add_prompt(frame_idx, text_str=,
boxes_xywh=, box_labels=)`` is called on a video without objects
(``Sam3VideoBase.run_backbone_and_detection`` -> ``build_outputs`` -> ``_postprocess_output``):

1. **text**: ``SAM3VLBackbone.forward_text`` on the pair ``[text or "<text placeholder>", "visual"]``
   (the video model's ``find_text_batch``); a text prompt reads the first, boxes alone read
   ``"visual"`` (``TEXT_ID_FOR_VISUAL``). Encodings are cached per model (:data:`TEXT_CACHE`
   phrases, least recently used dropped).
2. **exemplar boxes**: video pixels (x0, y0, x1, y1) -> normalised (cx, cy, w, h), the format the
   geometry encoder reads (``SequenceGeometryEncoder``: "normalized CxCyWH"), in a ``Prompt``
   with labels 1 / 0. Upstream's video model takes one box per call (its "visual prompt"); several
   boxes go into one prompt, as ``Sam3Processor.add_geometric_prompt`` accumulates them.
3. **detector**: ``Sam3Image.forward_grounding`` on the frame's detector features
   (``FrameFeatures.data["detector"]``; a frame read back from the feature store is encoded again).
4. **scores**: ``sigmoid(pred_logits)``. With the presence token (SAM3's build has it and
   ``supervise_joint_box_scores=True``) those logits already are ``logit(sigmoid(class) *
   sigmoid(presence))`` clamped to +/-10, so a score is at most sigmoid(10) = 0.99995.
5. **NMS** on masks (``sam3.perflib.nms.nms_masks``, IoU of masks binarised at 0), among
   detections scoring above ``request.threshold``, IoU threshold :data:`DET_NMS_THRESH`.
6. **kept**: not suppressed and scoring strictly above ``request.threshold`` (upstream compares
   ``pred_probs > score_threshold_detection``, 0.5 in its build; on a frame where it tracks nothing yet,
   as on the frame of ``add_prompt``, every such detection becomes an object: its ``new_det_thresh``,
   0.7, applies only to detections on frames where objects are tracked already).
7. **masks**: the kept low-resolution logits (``4 S / 14`` square) with holes and sprinkles of at most
   :data:`FILL_HOLE_AREA` pixels filled / removed (``fill_holes_in_mask_scores``), bilinearly
   resized to the video size (``align_corners=False``), binarised at logit > 0; empty masks are
   dropped; where masks overlap, each pixel goes to the detection with the higher score (ties: the
   earlier query), as ``_apply_object_wise_non_overlapping_constraints`` does on upstream's output.
8. **boxes** enclose each mask before that overlap rule (as upstream's ``out_boxes_xywh``), given as
   pixel edges: ``x1`` = last mask column + 1 (the convention of SAM2's "everything" detections).

So ``threshold=0.5`` (the default of :class:`DetectRequest`) gives exactly the objects
``add_prompt`` creates with upstream's settings; re-detection on frames with tracked objects would use
:data:`NEW_DET_THRESH` to match upstream.

Workaround kept here (``tests/test_sam3_detect.py`` has a test that fails without it):

- **roi_align without compiled torchvision ops**: the geometry encoder pools each exemplar box with
  ``torchvision.ops.roi_align``. When torchvision's compiled ops did not load (a wheel built for
  another torch; see :mod:`.torchvision_compat`), torchvision runs its pure-PyTorch fallback
  through ``torch.compile`` on the first call: 10-35 s of Inductor compilation on a 2-core CPU, and
  a C++ compiler at run time. :func:`ensure_eager_roi_align` points the geometry encoder at the same
  fallback without compilation (eager; inputs here are a few boxes, so its memory does not matter).
  With working ops nothing changes.

The ``pin_memory()`` the geometry encoder calls on a box scale is covered by
:func:`sam3_compat.no_pinning` around the forward (on machines that cannot pin).
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import sys
import threading
import types
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samtrack.errors import InvalidOptionError, PromptError
from samtrack.session.backends import sam3_compat
from samtrack.session.backends.base import DetectRequest, Detection, FrameFeatures

log = logging.getLogger(__name__)

DET_NMS_THRESH = 0.1  # sam3.model_builder.build_sam3_video_model: det_nms_thresh=0.1
SCORE_THRESH = 0.5  # build_sam3_video_model: score_threshold_detection=0.5 (a detection)
NEW_DET_THRESH = 0.7  # build_sam3_video_model: new_det_thresh=0.7 (a new object where objects are tracked)
FILL_HOLE_AREA = 16  # build_sam3_video_model: fill_hole_area=16 (pixels of the low-res mask)
VISUAL_TEXT = "visual"  # Sam3VideoInference: the text a prompt of boxes alone is read with
PLACEHOLDER_TEXT = "<text placeholder>"  # Sam3VideoInference: the text slot when no text is given
TEXT_CACHE = 16  # phrases whose encodings are kept per model
OPTIONS = {"det_nms_thresh": DET_NMS_THRESH, "fill_hole_area": FILL_HOLE_AREA}  # request.options, upstream names
EVERYTHING = ("SAM3 finds objects from a text or exemplar boxes: give a text ('cell') or boxes; "
              "'segment everything' is a SAM2/SAM2.1 model's prompt (sam2's automatic mask generator)")

_TEXT: "weakref.WeakKeyDictionary[torch.nn.Module, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_ROI_READY = False


# -- the public entry point --------------------------------------------------------------------
def detect(backend, frame: np.ndarray, feats: FrameFeatures | None, request: DetectRequest) -> list[Detection]:
    """Objects that SAM3's detector finds on one frame for ``request.text`` and/or exemplar boxes.

    ``backend``: a loaded :class:`~samtrack.session.backends.sam3_backend.Sam3Backend` (its
    ``detector``, ``device``, ``input_spec``, ``autocast`` and ``encode_image`` are used).
    ``frame``: (H, W, 3) uint8 RGB at video resolution. ``feats``: that frame's features from
    ``backend.encode_image`` (they hold the detector's part); None or features without it (read
    back from the feature store) -> the frame is encoded again. ``request``: ``text`` (a noun
    phrase) and/or ``boxes`` (K, 4) float (x0, y0, x1, y1) video pixels with ``box_labels`` (K,)
    1 positive / 0 negative (default all 1); ``threshold`` in 0..1 (detections scoring strictly
    above it); ``options``: ``det_nms_thresh`` (mask-IoU threshold of NMS, 0 turns NMS off;
    default 0.1) and ``fill_hole_area`` (pixels of the low-res mask; 0 turns it off; default 16).

    Returns detections sorted by score (descending; ties in query order): ``mask`` (H, W) bool, not
    overlapping another detection's (it can be empty when higher-scoring detections cover it all:
    upstream reports such a detection too, and the session skips it); ``box`` (x0, y0, x1, y1)
    float pixel edges enclosing the mask before the overlap rule (never empty); ``score`` in 0..1; ``logits`` the detector's raw
    mask logits (4 S/14, 4 S/14) float32 on the CPU (before hole filling). See the module docstring
    for each step and its upstream source.

    Raises :class:`PromptError` for ``request.everything`` (say: SAM2 has it), a request with
    neither text nor boxes, a frame that is not (H, W, 3) uint8, or malformed boxes or labels;
    :class:`InvalidOptionError` for a threshold outside 0..1 or an unknown / out-of-range option.
    """
    if request.everything:
        raise PromptError(EVERYTHING)
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise PromptError(f"a SAM3 detection needs an (H, W, 3) uint8 RGB frame (FrameStore.read gives one), "
                          f"got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    text = _check_text(request.text)
    boxes, labels = _check_boxes(request.boxes, request.box_labels, width, height)
    if text is None and boxes is None:
        raise PromptError("a SAM3 detection needs a text ('cell') or at least one exemplar box")
    threshold = _check_threshold(request.threshold)
    opts = _options(request.options)

    det_feats = _detector_features(backend, frame, feats)
    raw = run_detector(backend, det_feats, text, boxes, labels, width, height)
    found = postprocess(raw["scores"], raw["mask_logits"], height, width, threshold=threshold, **opts)
    log.debug("SAM3 detection (%s, %d boxes) on a %dx%d frame: %d of %d queries kept", text or "no text",
              0 if boxes is None else len(boxes), width, height, len(found), raw["scores"].shape[0])
    return found


# -- the detector ------------------------------------------------------------------------------
def run_detector(backend, det_feats: dict, text: str | None, boxes: np.ndarray | None, labels: np.ndarray | None,
                 width: int, height: int) -> dict[str, torch.Tensor]:
    """One forward of the detector. ``det_feats``: ``{"vision_features", "vision_pos_enc", "backbone_fpn"}``
    of one frame (batch 1). ``boxes`` (K, 4) video pixels (x0, y0, x1, y1) or None, ``labels`` (K,).

    Returns per query (Q = 200 in SAM3): ``scores`` (Q,) float32 in 0..1, ``boxes`` (Q, 4) float32
    normalised (x0, y0, x1, y1) of the model input (the detector's own box regression, not used
    for :class:`Detection`), ``mask_logits`` (Q, 4 S/14, 4 S/14) float32, ``presence`` () float32
    (the presence score, already inside ``scores``); all on the backend's device."""
    ensure_eager_roi_align()
    from sam3.model.data_misc import FindStage

    detector = backend.detector
    device = backend.device
    txt_feats, txt_mask = encode_text(backend, text)
    prompt = _geometry(boxes, labels, width, height, device)
    find = FindStage(img_ids=torch.zeros(1, dtype=torch.long, device=device),
                     text_ids=torch.zeros(1, dtype=torch.long, device=device), input_boxes=None,
                     input_boxes_mask=None, input_boxes_label=None, input_points=None, input_points_mask=None)
    backbone_out = {"vision_features": det_feats["vision_features"],
                    "vision_pos_enc": list(det_feats["vision_pos_enc"]), "backbone_fpn": list(det_feats["backbone_fpn"]),
                    "language_features": txt_feats, "language_mask": txt_mask}
    with torch.inference_mode(), _context(backend):
        out = detector.forward_grounding(backbone_out=backbone_out, find_input=find, find_target=None,
                                         geometric_prompt=prompt)
    presence = out.get("presence_logit_dec")
    return {"scores": out["pred_logits"][0, :, 0].float().sigmoid(),
            "boxes": out["pred_boxes_xyxy"][0].float(),
            "mask_logits": out["pred_masks"][0].float(),
            "presence": presence.float().sigmoid().reshape(()) if presence is not None else torch.ones(())}


def encode_text(backend, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's output for ``text`` (None: the boxes-only text ``"visual"``): features
    (L, 1, 256) and padding mask (1, L) bool (True = padding), L = 32 tokens. Encoded as upstream's
    video model encodes them (the pair ``[text or "<text placeholder>", "visual"]``, one batch),
    cached per model for :data:`TEXT_CACHE` phrases."""
    detector = backend.detector
    key = (text, str(backend.device), bool(getattr(backend, "autocast", False)))
    with _LOCK:
        cache = _TEXT.setdefault(detector, collections.OrderedDict())
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
    pair = [text if text is not None else PLACEHOLDER_TEXT, VISUAL_TEXT]
    with torch.inference_mode(), _context(backend):
        out = detector.backbone.forward_text(pair, device=backend.device)
    i = 0 if text is not None else 1
    hit = (out["language_features"][:, i:i + 1], out["language_mask"][i:i + 1])
    with _LOCK:
        cache[key] = hit
        while len(cache) > TEXT_CACHE:
            cache.popitem(last=False)
    return hit


def _geometry(boxes, labels, width: int, height: int, device):
    """The geometric ``Prompt``: no boxes (upstream's ``empty_geometric_prompt``) or (K, 1, 4)
    normalised cxcywh boxes with (K, 1) long labels."""
    from sam3.model.geometry_encoders import Prompt

    if boxes is None:
        return Prompt(box_embeddings=torch.zeros(0, 1, 4, device=device),
                      box_mask=torch.zeros(1, 0, dtype=torch.bool, device=device),
                      box_labels=torch.zeros(0, 1, dtype=torch.long, device=device),
                      point_embeddings=torch.zeros(0, 1, 2, device=device),
                      point_mask=torch.zeros(1, 0, dtype=torch.bool, device=device),
                      point_labels=torch.zeros(0, 1, dtype=torch.long, device=device))
    b = torch.as_tensor(boxes, dtype=torch.float32)
    scale = torch.tensor([width, height], dtype=torch.float32)
    xy0, xy1 = b[:, :2] / scale, b[:, 2:] / scale
    cxcywh = torch.cat([(xy0 + xy1) / 2, xy1 - xy0], dim=1)
    return Prompt(box_embeddings=cxcywh[:, None].to(device),
                  box_labels=torch.as_tensor(labels, dtype=torch.long)[:, None].to(device))


def _detector_features(backend, frame: np.ndarray, feats: FrameFeatures | None) -> dict:
    data = getattr(feats, "data", None)
    if isinstance(data, dict) and "detector" in data:
        return data["detector"]
    from samtrack.io.model_input import to_model_input

    idx = feats.frame_idx if feats is not None else -1
    log.debug("frame %d: features without the detector's part (from the feature store): encoding it again", idx)
    fresh = backend.encode_image(to_model_input(frame, backend.input_spec, device=backend.device), idx)
    return fresh.data["detector"]


def _context(backend):
    stack = contextlib.ExitStack()
    stack.enter_context(sam3_compat.no_pinning())
    if getattr(backend, "autocast", False):
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


# -- post-processing ------------------------------------------------------------------------------
def postprocess(scores: torch.Tensor, mask_logits: torch.Tensor, height: int, width: int, *, threshold: float,
                det_nms_thresh: float = DET_NMS_THRESH, fill_hole_area: int = FILL_HOLE_AREA) -> list[Detection]:
    """Detections from per-query ``scores`` (Q,) and low-res ``mask_logits`` (Q, s, s) (steps 5-8 of
    the module docstring). Returns them sorted by score, descending."""
    from sam3.model.sam3_tracker_utils import fill_holes_in_mask_scores
    from sam3.perflib.nms import nms_masks

    scores = scores.float()
    mask_logits = mask_logits.float()
    keep = scores > threshold
    if det_nms_thresh > 0 and bool(keep.any()):
        keep &= nms_masks(pred_probs=scores, pred_masks=mask_logits, prob_threshold=threshold,
                          iou_threshold=det_nms_thresh)
    idx = torch.nonzero(keep).flatten()  # query order, as upstream numbers new objects
    if idx.numel() == 0:
        return []
    raw = mask_logits[idx]
    low = raw[:, None]
    if fill_hole_area > 0:
        low = fill_holes_in_mask_scores(low, max_area=fill_hole_area, fill_holes=True, remove_sprinkles=True)
    video = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0
    nonempty = video.flatten(1).any(1)
    idx, raw, video = idx[nonempty], raw[nonempty], video[nonempty]
    if idx.numel() == 0:
        return []
    kept_scores = scores[idx]
    boxes = _edge_boxes(video)
    if idx.numel() > 1:
        video = _non_overlapping(video, kept_scores)
    masks = video.cpu().numpy()
    s = kept_scores.cpu().numpy()
    order = np.argsort(-s, kind="stable")
    return [Detection(mask=masks[i], box=tuple(float(v) for v in boxes[i]), score=float(s[i]),
                      logits=raw[i].cpu()) for i in order]


def _edge_boxes(masks: torch.Tensor) -> np.ndarray:
    """(N, H, W) bool, none empty -> (N, 4) float64 (x0, y0, x1 + 1, y1 + 1) pixel edges."""
    cols = masks.any(1).cpu().numpy()  # (N, W)
    rows = masks.any(2).cpu().numpy()  # (N, H)
    out = np.empty((masks.shape[0], 4), dtype=np.float64)
    for i in range(masks.shape[0]):
        xs, ys = np.flatnonzero(cols[i]), np.flatnonzero(rows[i])
        out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def _non_overlapping(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Each pixel claimed by several masks stays with the highest score (ties: the first), as
    ``Sam3TrackerPredictor._apply_object_wise_non_overlapping_constraints`` with the scores as
    object scores and 0 as background."""
    per_pixel = torch.where(masks, scores[:, None, None], torch.zeros((), dtype=scores.dtype, device=scores.device))
    owner = per_pixel.argmax(0)  # first maximum
    return masks & (owner[None] == torch.arange(masks.shape[0], device=masks.device)[:, None, None])


# -- validation ------------------------------------------------------------------------------------
def _check_text(text) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"text={text!r}: give a noun phrase such as 'cell', or exemplar boxes")
    return text.strip()


def _check_boxes(boxes, labels, width: int, height: int):
    if boxes is None:
        if labels is not None and np.asarray(labels).size:
            raise PromptError("box_labels without boxes: give the exemplar boxes (x0, y0, x1, y1) too")
        return None, None
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return None, None
    if b.ndim == 1 and b.size == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise PromptError(f"exemplar boxes must be (K, 4) as (x0, y0, x1, y1) video pixels, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise PromptError("exemplar boxes contain NaN or infinity")
    lab = np.ones(len(b), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
    if len(lab) != len(b):
        raise PromptError(f"{len(b)} exemplar boxes but {len(lab)} labels: one label (1 positive, 0 negative) per box")
    if not np.isin(lab, (0, 1)).all():
        raise PromptError(f"exemplar labels are 1 (positive) or 0 (negative), got {sorted(set(lab.tolist()))}")
    clipped = np.stack([b[:, 0].clip(0, width), b[:, 1].clip(0, height), b[:, 2].clip(0, width),
                        b[:, 3].clip(0, height)], axis=1)
    bad = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if bad.any():
        x0, y0, x1, y1 = b[bad][0]
        raise PromptError(f"exemplar box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no area inside the {width}x{height} "
                          "frame; boxes are (x0, y0, x1, y1) video pixels with x1 > x0 and y1 > y0")
    return clipped, lab.astype(np.int64)


def _check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"threshold={threshold!r}: a detection score threshold is a number in 0..1") from None
    if not 0.0 <= t <= 1.0:
        raise InvalidOptionError(f"threshold={threshold!r}: a detection score threshold is between 0 and 1")
    return t


def _options(options) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise InvalidOptionError(f"unknown SAM3 detection option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    out = {**OPTIONS, **opts}
    nms = out["det_nms_thresh"]
    if isinstance(nms, bool) or not isinstance(nms, (int, float)) or not 0.0 <= float(nms) <= 1.0:
        raise InvalidOptionError(f"det_nms_thresh={nms!r}: a mask IoU between 0 and 1 (0 turns NMS off)")
    area = out["fill_hole_area"]
    if isinstance(area, bool) or not isinstance(area, (int, np.integer)) or area < 0:
        raise InvalidOptionError(f"fill_hole_area={area!r}: a whole number of low-res mask pixels >= 0 (0: off)")
    return {"det_nms_thresh": float(nms), "fill_hole_area": int(area)}


# -- workaround: roi_align without compiled torchvision ops -----------------------------------------------
def ensure_eager_roi_align() -> bool:
    """When torchvision's compiled ops are missing, make ``sam3.model.geometry_encoders`` call
    torchvision's pure-PyTorch ``roi_align`` eagerly instead of through ``torch.compile`` (see the
    module docstring). Returns whether it is in effect. Idempotent, thread-safe; with working ops it
    changes nothing."""
    global _ROI_READY
    with _LOCK:
        if _ROI_READY:
            return _ROI_READY is True
        sam3_compat.ensure_importable()
        import torchvision
        from torchvision.extension import _has_ops

        geo = importlib.import_module("sam3.model.geometry_encoders")
        if _has_ops():
            _ROI_READY = "compiled"
            return False
        eager = getattr(getattr(sys.modules.get("torchvision.ops.roi_align"), "_roi_align", None), "__wrapped__", None)
        if eager is None:  # another torchvision layout: leave its own fallback in place
            log.info("torchvision's compiled ops are missing and its roi_align fallback was not found: "
                     "the first exemplar box may take a while (torch.compile)")
            _ROI_READY = "compiled"
            return False
        geo.torchvision = _torchvision_view(torchvision, _eager_roi_align(eager))
        log.info("torchvision's compiled ops are missing: SAM3's exemplar boxes use its roi_align fallback "
                 "without torch.compile")
        _ROI_READY = True
        return True


def _eager_roi_align(impl):
    def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        """``torchvision.ops.roi_align`` (same arguments) through torchvision's eager fallback."""
        if not isinstance(boxes, torch.Tensor):
            boxes = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b], dim=1)
                               for i, b in enumerate(boxes)], dim=0)
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        return impl(input, boxes, spatial_scale, size[0], size[1], sampling_ratio, aligned)

    return roi_align


def _torchvision_view(torchvision, roi_align):
    """A stand-in for the ``torchvision`` module inside sam3's geometry encoder: ``ops.roi_align`` is
    ``roi_align``, every other name is torchvision's."""

    class _Ops(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torchvision.ops, name)

    class _Torchvision(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torchvision, name)

    ops = _Ops("torchvision.ops")
    ops.roi_align = roi_align
    view = _Torchvision("torchvision")
    view.ops = ops
    return view
