"""The seam between the session and a model family: the :class:`Backend` protocol.

The session speaks in frames, objects, prompts and :class:`MemoryEntry` records;
how a family (SAM2/SAM2.1 through ``sam2``, SAM3 through ``sam3``) turns them into
its own state is the adapter's business, and only modules in this package import
a model package or name its state-dict keys (``tests/test_layers.py`` checks).

Conventions every backend keeps (``tests/test_backend_conformance.py`` checks them
against every registered backend, the fake one included):

- ``S`` = ``image_size`` (the square model input), ``s`` = ``low_res_size`` (the
  side of the low-resolution mask logits: S/4 for SAM2, 4 S/14 for SAM3), ``B`` = objects
  in one batch, ``C`` = pointer width, ``Cm`` = memory channels.
- Frames reach a backend as ``(3, S, S)`` float32 tensors made by
  :func:`samtrack.io.model_input.to_model_input` with the backend's
  :class:`InputSpec` (its resize and normalisation); they may be on any device.
- Point prompts reach a backend in model input pixels (x, y) in ``[0, S]``,
  made by :meth:`Backend.map_points` from video pixels; mask prompts as
  ``(H, W)`` bool tensors at video resolution.
- Outputs are on ``backend.device``; logits are float32; ``maskmem`` is in the
  backend's storage dtype (bfloat16 for SAM2 and SAM3, as upstream stores it).
- Errors: a state dict of another model is a :class:`samtrack.errors.CheckpointError`
  naming the nearest registered model; a missing model package is a
  :class:`~samtrack.errors.CheckpointError` saying what to install; an optional
  capability a family lacks (``detect`` for a text prompt on SAM2) is a
  :class:`~samtrack.errors.PromptError` saying which model family has it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from samtrack.io.model_input import InputSpec  # noqa: F401  (re-exported: the backend's preprocessing)
from samtrack.memory.entry import MemoryEntry  # noqa: F401  (the record the session and the bank share)


@dataclass
class FrameFeatures:
    """Image-encoder output of one frame (batch 1); ``data`` is adapter-private."""

    frame_idx: int
    data: Any


@dataclass
class MemoryView:
    """The frames one object's attention may read for one step."""

    cond: dict[int, MemoryEntry]  # keyframes (already capped to the nearest N)
    other: Mapping[int, MemoryEntry]  # any other frame by index (.get)


@dataclass
class TrackRequest:
    frame_idx: int
    reverse: bool
    views: Sequence[MemoryView]  # one per object, in batch order


@dataclass
class StepOutput:
    """Per-object results of one frame, batch-first."""

    mask_logits: torch.Tensor  # (B, 1, s, s) float32 low-res output (after post-processing)
    mem_logits: torch.Tensor  # (B, 1, s, s) what memory is encoded from (the same tensor when equal)
    obj_ptr: torch.Tensor  # (B, C) float32
    object_score: torch.Tensor  # (B, 1) float32 logit: > 0 means the object is present
    iou: torch.Tensor  # (B,) float32 predicted IoU of the chosen mask
    maskmem: torch.Tensor | None  # (B, Cm, h, w) storage dtype, or None (encoded later)
    entries: list[MemoryEntry] = field(default_factory=list)


@dataclass
class FrameHistory:
    """Per-frame scores of one object's stored non-keyframe entries, for families whose memory
    attention picks earlier frames by score (SAM3's memory selection). Arrays of length
    ``n_frames``, float32, NaN where the object has no entry on that frame."""

    object_score: np.ndarray  # object-score logit per frame
    iou: np.ndarray  # predicted IoU per frame


@dataclass(frozen=True)
class DetectRequest:
    """An object-creating prompt on one frame.

    ``text``: a noun phrase ("cell"); ``boxes``: (K, 4) float (x0, y0, x1, y1) exemplar
    boxes in video pixels with ``box_labels`` (K,) 1 = positive, 0 = negative;
    ``everything``: segment every object (SAM2's automatic mask generator);
    ``threshold``: keep detections whose score is at least this (0..1);
    ``options``: family-specific settings (e.g. ``points_per_side``)."""

    text: str | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    everything: bool = False
    threshold: float = 0.5
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Detection:
    """One detected object on a frame: ``mask`` (H, W) bool at video resolution, ``box``
    (x0, y0, x1, y1) in video pixels, ``score`` in 0..1, ``logits`` the family's raw mask
    logits (any resolution; for fidelity checks), or None."""

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    logits: torch.Tensor | None = None


def memory_frames(frame_idx: int, reverse: bool, num_maskmem: int, stride: int) -> list[tuple[int, int]]:
    """(t_pos, frame) of the non-keyframe memories SAM2 looks up for a step at ``frame_idx``
    (``SAM2Base._prepare_memory_conditioned_features``): t_pos 1 (oldest) to ``num_maskmem - 1``
    (the previous frame in the direction of travel), every ``stride``-th frame beyond the previous one.
    Frames may lie outside the video."""
    out = []
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            t = frame_idx + 1 if reverse else frame_idx - 1
        elif not reverse:
            t = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            t = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out.append((t_pos, t))
    return out


def frames_by_position(frame_idx: int, reverse: bool, n_frames: int, num_maskmem: int, max_obj_ptrs: int,
                       stride: int = 1) -> list[int]:
    """SAM2's choice of earlier frames by position alone (``SAM2Base._prepare_memory_conditioned_features``,
    also SAM3's tracker without memory selection): the memories of the ``num_maskmem - 1`` previous
    frames in the direction of travel (the nearest one, then every ``stride``-th), and the object
    pointers of up to ``max_obj_ptrs - 1`` previous frames. Sorted frame indices inside the video."""
    # upstream looks memory frames up in a dict, where those outside the video are simply absent
    out = [t for _, t in memory_frames(frame_idx, reverse, num_maskmem, stride) if 0 <= t < n_frames]
    for t_diff in range(1, min(n_frames, max_obj_ptrs)):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or t >= n_frames:
            break
        out.append(t)
    return sorted(set(out))


def upsample_logits(logits: torch.Tensor, height: int, width: int, device) -> torch.Tensor:
    """(B, 1, s, s) low-res logits -> (B, H, W) float32 at video resolution on ``device``: bilinear,
    ``align_corners=False``, as upstream's predictors resize their outputs (SAM2 and SAM3)."""
    import torch.nn.functional as F

    x = logits.to(device).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[:, 0]


class Backend(Protocol):
    """What the session needs from one loaded model (not thread-safe: one session drives it)."""

    family: str  # registry key: "sam2" (SAM2 and SAM2.1), "sam3", "fake"
    spec: Any  # the registry row (samtrack.session.models.ModelSpec)
    checkpoint: Any  # path of the loaded checkpoint, None for untrained weights
    image_size: int  # S
    input_spec: InputSpec  # how frames are resized and normalised for this model
    low_res_size: int  # s
    no_object_logit: float  # the logit that means "no mask here" (upstream's NO_OBJ_SCORE, -1024)
    num_maskmem: int
    max_obj_ptrs: int
    device: torch.device
    calls: dict  # Counter per method name ("encode_image", "track", "prompt", "encode_memory"): frame -> calls

    def map_points(self, points: np.ndarray, width: int, height: int) -> torch.Tensor:
        """(N, 2) float (x, y) video pixels -> (N, 2) float32 model input pixels in [0, S]."""
        ...

    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures: ...

    def features_to_store(self, feats: FrameFeatures) -> dict[str, torch.Tensor]: ...

    def features_from_store(self, rows: dict[str, torch.Tensor], frame_idx: int) -> FrameFeatures: ...

    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int,
                    history: Callable[[], FrameHistory] | None = None) -> list[int]:
        """Non-keyframe frame indices whose memory or pointer the step at ``frame_idx`` may read
        (those absent from the bank are skipped). ``history`` gives the object's per-frame scores
        for a family that selects memories by score; others ignore it."""
        ...

    def track(self, feats: FrameFeatures, req: TrackRequest, n_frames: int) -> StepOutput: ...

    def prompt(self, feats: FrameFeatures, frame_idx: int, view: MemoryView | None, *, points=None, labels=None,
               mask=None, prev_logits=None, reverse: bool = False, n_frames: int) -> StepOutput: ...

    def encode_memory(self, feats: FrameFeatures, logits: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> torch.Tensor: ...

    # (B, 1, s, s) low-res logits -> (B, H, W) float32 at video resolution, a new tensor the caller owns:
    # the session hands its rows to the user as FrameResult.logits without a copy (FakeBackend, for benches
    # and tests, returns one constant tensor instead)
    def to_video_res(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor: ...

    # optional: batching of objects whose memory read sets differ (SAM2). ``batch_key(view, frame_idx,
    # reverse, n_frames, pad=)`` -> hashable: the session runs objects with equal keys as one ``track`` batch
    # (without it: objects whose views hold the same frames). ``pad`` is SessionConfig.pad_read_sets resolved.
    # def batch_key(self, view: MemoryView, frame_idx: int, reverse: bool, n_frames: int, *, pad: bool): ...
    # optional: ``cuda_graphs`` (bool, settable): tracking steps replayed from CUDA graphs; the session sets it
    # from SessionConfig.cuda_graphs when it opens (True on a device that is not CUDA: InvalidOptionError).

    # optional: families that create objects (SAM3 text / exemplars, SAM2 "everything"). ``object_queries``
    # names the object-creating prompt kinds ``detect`` answers ("concept": text / exemplars, "everything"),
    # so the session refuses the others before encoding the frame.
    # object_queries: frozenset[str]
    # def detect(self, frame: np.ndarray, feats: FrameFeatures | None, request: DetectRequest) -> list[Detection]
