"""SAM3's tracker through the ``sam3`` package, driving its modules directly from samtrack's loop.

The model is built as ``build_sam3_video_model`` builds it (:mod:`.sam3_build`, any image size),
so the same checkpoint behaves the same. One image encoding serves both halves of SAM3: the
shared ViT runs once per frame and :meth:`Sam3Backend.encode_image` keeps the tracker's features
(its neck, with the mask decoder's ``conv_s0``/``conv_s1`` applied, as upstream's tracker does)
and the detector's backbone output. Each step hands ``Sam3TrackerBase.track_step`` an
``output_dict`` holding only the frames its memory attention reads, assembled from the
MemoryBank, with the objects of one frame stacked into one batch.

Semantics are those of upstream's ``Sam3TrackerPredictor`` run with one object per inference
state (how ``Sam3VideoInferenceWithInstanceInteractivity`` tracks objects added by clicks):

- **memory selection** (``use_memory_selection``, on in the video model): the step at ``t``
  reads, besides the (at most 4) nearest keyframes, the last 15 earlier tracked frames whose
  score ``(2 sigmoid(object score) - 1, 0 if absent) x predicted IoU`` exceeds 0.01 (scanning
  back over every earlier frame; forward passes never consider frame 0), plus ``t -/+ 1``
  (``Sam3TrackerBase.frame_filter``); memories of the last 6 of those, pointers of all but the
  oldest, with pointer positions by rank. :meth:`Sam3Backend.frames_read` makes that choice from
  the scores the bank keeps (:class:`~samtrack.session.backends.base.FrameHistory`).
- **prompts read no memory** (upstream's ``add_new_points_or_box(use_prev_mem_frame=False)``):
  a correction on a tracked frame is decoded from the frame alone, with the previous logits.
- ``clear_non_cond_mem_around_input``: in ``sam3`` 0.1.4 it clears only the per-object slices
  of the inference state, which propagation does not read, so it changes no result; samtrack
  has nothing to clear.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samtrack.errors import CheckpointError, PromptError
from samtrack.io.model_input import InputSpec
from samtrack.session.backends import sam3_build, sam3_compat
from samtrack.session.backends.base import (DetectRequest, Detection, FrameFeatures, FrameHistory, MemoryEntry,
                                            MemoryView, StepOutput, TrackRequest, frames_by_position,
                                            upsample_logits)
from samtrack.session.checkpoints import load_state_dict
from samtrack.session.devices import pick_device
from samtrack.session.models import ModelSpec

FAMILY = "sam3"
NO_OBJ_SCORE = -1024.0  # sam3/model/sam3_tracker_base.py NO_OBJ_SCORE
SAM3_MEAN = SAM3_STD = (0.5, 0.5, 0.5)  # build_sam3_video_model(image_mean=, image_std=)
MAX_PROMPT_POINTS = 16  # Sam3TrackerPredictor.max_point_num_in_prompt_enc: first 8 and last 8 are kept
MASK_LOGIT = 1024.0  # a mask prompt at video resolution becomes +/-1024 logits (-NO_OBJ_SCORE), as upstream

log = logging.getLogger(__name__)

sam3_compat.ensure_importable()


def recognise(sd: dict) -> str | None:
    """``"sam3"``, ``"sam3_tiny"`` (the test preset), "an unregistered SAM3 (...)", or None (not SAM3)."""
    return sam3_build.recognise(sd)


def load(spec: ModelSpec, checkpoint, *, image_size: int | None = None, device="auto", **kw) -> "Sam3Backend":
    """The registry's entry point. ``kw``: ``width`` ("full" / "tiny"; default: what the checkpoint is,
    else "full"), ``bpe_path`` (the text encoder's vocabulary file)."""
    return Sam3Backend(spec, checkpoint, image_size=image_size, device=device, **kw)


class Sam3Backend:
    """Adapter of one loaded SAM3 model. Not thread-safe: one session drives it.

    ``FrameFeatures.data`` of a frame (batch 1, on the backend's device, in the encoder's dtype:
    float32 on the CPU, bfloat16 under CUDA autocast) is a dict:

    - ``"tracker"``: ``{"backbone_fpn": [f0, f1, f2], "vision_pos_enc": [p0, p1, p2],
      "vision_features": f2}``, the tracker's neck at 4x, 2x, 1x of ``S / 14`` with the mask
      decoder's ``conv_s0`` / ``conv_s1`` already applied (32, 64 and 256 channels), as
      ``Sam3TrackerBase.forward_image`` returns it;
    - ``"detector"``: ``{"vision_features", "vision_pos_enc", "backbone_fpn"}``, the detector's
      own neck (256 channels at the same three levels), as ``SAM3VLBackbone.forward_image``
      returns it without its ``"sam2_backbone_out"``; present on freshly encoded frames only
      (features read back from the feature store have the tracker's part alone: a detection on
      such a frame encodes it again).
    """

    family = FAMILY
    no_object_logit = NO_OBJ_SCORE
    object_queries = frozenset({"concept"})  # detect(): text and exemplar boxes (sam3_detect)

    def __init__(self, spec: ModelSpec, checkpoint, *, image_size: int | None = None, device="auto",
                 width: str | None = None, bpe_path=None):
        self.device = pick_device(device)
        sd = None
        preset_key = width
        if checkpoint is not None:
            sd = load_state_dict(checkpoint)
            found = sam3_build.preset_of(sd)
            if found is None:
                _refuse(sd, spec, checkpoint)
            key = next(k for k, p in sam3_build.PRESETS.items() if p is found)
            if width is not None and width != key:
                raise CheckpointError(f"{checkpoint} is a {found.name} checkpoint ({found.describe()}), not "
                                      f"width={width!r}: leave width unset")
            preset_key = key
        preset_key = preset_key or "full"
        preset = sam3_build.PRESETS.get(preset_key)
        size = image_size or (sam3_build.saved_image_size(sd) if sd else None) or getattr(spec, "image_size", 0) \
            or sam3_build.DEFAULT_SIZE
        with torch.random.fork_rng(devices=[]):
            if checkpoint is None:  # untrained: the same random weights in every process (a resumed job agrees)
                torch.manual_seed(0)
            model = sam3_build.build_video_model(size, preset_key, bpe=bpe_path, device="cpu")
        if sd is not None:
            sd = sam3_build.check_state_dict(sd, model.state_dict(), preset.name, checkpoint)
            model.load_state_dict(sd, strict=True)
        model.to(self.device).eval()
        sam3_compat.place(model, self.device, model.tracker.image_size, sam3_build.STRIDE)
        self.model = model
        self.tracker = model.tracker
        self.detector = model.detector
        self.preset = preset
        self.spec = spec if preset.name == spec.name else dataclasses.replace(spec, name=preset.name, size=preset_key)
        self.checkpoint = checkpoint
        t = self.tracker
        self.image_size = int(t.image_size)
        self.input_spec = InputSpec(self.image_size, SAM3_MEAN, SAM3_STD)
        self.low_res_size = int(t.low_res_mask_size)  # 4 x S / 14 (288 at 1008 px)
        self.num_maskmem = int(t.num_maskmem)
        self.max_obj_ptrs = int(t.max_obj_ptrs_in_encoder)
        self.stride = int(t.memory_temporal_stride_for_eval)
        self.memory_selection = bool(t.use_memory_selection)
        self.mf_threshold = float(t.mf_threshold)
        self.autocast = self.device.type == "cuda"  # bf16 on CUDA, as upstream runs it
        # candidate masks a tracking step decodes (3: multimask output for tracking, as built upstream)
        self._tracked_masks = t.sam_mask_decoder.num_multimask_outputs if t._use_multimask(False, None) else 1
        self._pos_enc: list[torch.Tensor] | None = None
        self._fpn_pos_cache: dict[tuple, list[torch.Tensor]] = {}
        self._ious: torch.Tensor | None = None
        self.tracker.sam_mask_decoder.register_forward_hook(self._keep_ious)
        self.calls: dict = {"encode_image": collections.Counter(), "track": collections.Counter(),
                            "prompt": collections.Counter(), "encode_memory": collections.Counter()}

    def _keep_ious(self, module, args, output) -> None:
        self._ious = output[1]  # (B, M) predicted IoUs of the decoder's last call

    # -- prompts --------------------------------------------------------------
    def map_points(self, points: np.ndarray, width: int, height: int) -> torch.Tensor:
        """(N, 2) (x, y) video pixels -> model input pixels: relative coordinates times S, as
        ``add_new_points_or_box(rel_coordinates=True)`` (x / W * S, y / H * S)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        return pts / torch.tensor([width, height], dtype=torch.float32) * self.image_size

    # -- frames ---------------------------------------------------------------
    def _ctx(self):
        stack = contextlib.ExitStack()
        stack.enter_context(sam3_compat.no_pinning())
        if self.autocast:
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return stack

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures:
        """``image``: (3, S, S) float32 normalised with 0.5/0.5. One run of the shared encoder."""
        self.calls["encode_image"][frame_idx] += 1
        with self._ctx():
            out = self.detector.backbone.forward_image(image.to(self.device, non_blocking=True).float()[None])
            sam2 = out["sam2_backbone_out"]
            dec = self.tracker.sam_mask_decoder
            fpn = [dec.conv_s0(sam2["backbone_fpn"][0]), dec.conv_s1(sam2["backbone_fpn"][1]), sam2["backbone_fpn"][2]]
        # one layout for every frame's position encodings (upstream's sine encoding returns a permuted view for
        # a shape it has not cached yet, a contiguous copy after): fresh and stored frames track alike
        tracker = {"backbone_fpn": fpn, "vision_pos_enc": [p.contiguous() for p in sam2["vision_pos_enc"]],
                   "vision_features": fpn[-1]}
        detector = {k: out[k] for k in ("vision_features", "vision_pos_enc", "backbone_fpn")}
        key = tuple((tuple(t.shape[-2:]), t.dtype) for t in fpn)
        self._fpn_pos_cache.setdefault(key, tracker["vision_pos_enc"])
        return FrameFeatures(frame_idx, {"tracker": tracker, "detector": detector})

    def features_to_store(self, feats: FrameFeatures) -> dict[str, torch.Tensor]:
        """The tracker's three levels (batch dimension dropped) as the encoder produced them, so a
        frame read back tracks exactly as a fresh one. At 1008 px: (32, 288, 288), (64, 144, 144),
        (256, 72, 72). Position encodings depend on shapes only; the detector's part is not kept."""
        return {f"fpn{i}": t[0] for i, t in enumerate(feats.data["tracker"]["backbone_fpn"])}

    def features_from_store(self, rows: dict[str, torch.Tensor], frame_idx: int) -> FrameFeatures:
        """Inverse of :meth:`features_to_store` (rows on any device), in the encoder's own memory layout:
        channels-last (its ViT's (B, H, W, C) tokens permuted), so the kernels that read them see what a
        fresh encoding gives."""
        fpn = [rows[f"fpn{i}"][None].to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
               for i in range(3)]
        tracker = {"backbone_fpn": fpn, "vision_pos_enc": self._fpn_pos(fpn), "vision_features": fpn[-1]}
        return FrameFeatures(frame_idx, {"tracker": tracker})

    def _fpn_pos(self, fpn: list[torch.Tensor]) -> list[torch.Tensor]:
        """The neck's sine position encodings for levels of these shapes (equal to the encoder's)."""
        key = tuple((tuple(t.shape[-2:]), t.dtype) for t in fpn)
        pos = self._fpn_pos_cache.get(key)
        if pos is None:
            neck = self.detector.backbone.vision_backbone
            with torch.inference_mode():
                pos = [neck.position_encoding(torch.zeros(1, 256, *t.shape[-2:], device=self.device)).to(t.dtype)
                       .contiguous() for t in fpn]  # the layout encode_image gives
            self._fpn_pos_cache[key] = pos
        return pos

    def _features(self, feats: FrameFeatures, batch: int):
        tr = feats.data["tracker"]
        expanded = {"backbone_fpn": [x.expand(batch, -1, -1, -1) for x in tr["backbone_fpn"]],
                    "vision_pos_enc": [x.expand(batch, -1, -1, -1) for x in tr["vision_pos_enc"]]}
        _, vision_feats, vision_pos, sizes = self.tracker._prepare_backbone_features(expanded)
        return vision_feats, vision_pos, sizes

    # -- which frames attention reads ---------------------------------------------------
    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int,
                    history: Callable[[], FrameHistory] | None = None) -> list[int]:
        """Non-keyframe frames the step at ``frame_idx`` reads (sorted). With memory selection:
        upstream's ``frame_filter`` list (see the module docstring) from ``history()``'s scores;
        without ``history`` every earlier frame counts as selectable. Without memory selection:
        SAM2's rule (memories t-1..t-6, pointers t-1..t-15)."""
        if not self.memory_selection:
            return self._frames_by_position(frame_idx, reverse, n_frames)
        return sorted(self._selected(frame_idx, reverse, n_frames, history() if history is not None else None))

    def _cap(self, n_frames: int) -> int:
        return min(n_frames, self.max_obj_ptrs) - 1  # frame_filter keeps max_num - 1 selected frames

    def _selected(self, f: int, reverse: bool, n: int, hist: FrameHistory | None) -> list[int]:
        """``Sam3TrackerBase.frame_filter`` on the bank's scores: the nearest ``cap`` earlier frames
        (in the direction of travel) whose score exceeds ``mf_threshold``, plus the adjacent one."""
        if (f == 0 and not reverse) or (f == n - 1 and reverse):
            return []
        cap = self._cap(n)
        # candidates, nearest first: f-1 .. 1 forward (range(f - 1, 0, -1) never reaches 0), f+1 .. n-1 backward
        lo, hi = (1, f) if not reverse else (f + 1, n)
        found: list[int] = []
        block = 512
        while len(found) < cap and lo < hi:
            if not reverse:
                a, b = max(lo, hi - block), hi
                hi = a
            else:
                a, b = lo, min(hi, lo + block)
                lo = b
            if hist is None:
                ok = np.arange(a, b)
            else:
                ok = np.flatnonzero(self._valid(hist.object_score[a:b], hist.iou[a:b])) + a
            found.extend((ok[::-1] if not reverse else ok)[: cap - len(found)].tolist())
        must = f - 1 if not reverse else f + 1
        if must not in found:
            found.append(must)
        return found

    def _valid(self, score: np.ndarray, iou: np.ndarray) -> np.ndarray:
        """``cal_mem_score`` for one object per frame, compared with ``mf_threshold`` (float32, as upstream)."""
        s = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))
        i = torch.from_numpy(np.ascontiguousarray(iou, dtype=np.float32))
        norm = torch.where(s > 0, s.sigmoid() * 2 - 1, torch.zeros_like(s))
        return ((norm * i) > self.mf_threshold).numpy()

    def _frames_by_position(self, frame_idx: int, reverse: bool, n_frames: int) -> list[int]:
        return frames_by_position(frame_idx, reverse, n_frames, self.num_maskmem, self.max_obj_ptrs, self.stride)

    def _output_dict(self, views: Sequence[MemoryView], frame_idx: int, reverse: bool, n_frames: int) -> dict:
        """Upstream's output_dict for a batch of objects that read the same frames. With memory
        selection, each non-keyframe carries an ``eff_iou_score`` that makes upstream's own
        ``frame_filter`` pick exactly these frames in this order: every frame counts as selected,
        except the adjacent frame when the list is full (then it was only appended, upstream's
        ``must_include``)."""
        cond = {t: self._stack([v.cond[t] for v in views]) for t in views[0].cond}
        other = {}
        for t in sorted(views[0].other):
            other[t] = self._stack([v.other[t] for v in views])
        if self.memory_selection:
            adjacent = frame_idx + 1 if reverse else frame_idx - 1
            full = len(other) > self._cap(n_frames)
            for t, out in other.items():
                out["eff_iou_score"] = 0.0 if (full and t == adjacent) else 1.0
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": other}

    def _stack(self, entries: Sequence[MemoryEntry]) -> dict:
        dev = self.device
        feats = torch.stack([e.maskmem.to(dev, non_blocking=True) for e in entries])
        if not self.autocast:
            feats = feats.float()  # bf16 storage (as upstream) promoted exactly, as its concat with pointers does
        ptr = torch.stack([e.obj_ptr.to(dev, non_blocking=True) for e in entries])
        return {"maskmem_features": sam3_compat.OnDevice(feats),
                "maskmem_pos_enc": [sam3_compat.OnDevice(self._expand_pos(len(entries)))], "obj_ptr": ptr}

    def _expand_pos(self, batch: int) -> torch.Tensor:
        if self._pos_enc is None:
            raise RuntimeError("memory position encoding is not known before the first memory encoding")
        return self._pos_enc[-1].expand(batch, -1, -1, -1)

    def _remember_pos(self, pos) -> None:
        if self._pos_enc is None:
            self._pos_enc = [x[0:1].clone() for x in pos]

    # -- steps ------------------------------------------------------------------------------
    @torch.inference_mode()
    def track(self, feats: FrameFeatures, req: TrackRequest, n_frames: int) -> StepOutput:
        """One tracking step for a batch of objects whose views hold the same frames."""
        b = len(req.views)
        self.calls["track"][req.frame_idx] += b
        with self._ctx():
            vf, vp, sizes = self._features(feats, b)
            od = self._output_dict(req.views, req.frame_idx, req.reverse, n_frames)
            out = self.tracker.track_step(
                frame_idx=req.frame_idx, is_init_cond_frame=False, current_vision_feats=vf,
                current_vision_pos_embeds=vp, feat_sizes=sizes, image=None, point_inputs=None, mask_inputs=None,
                output_dict=od, num_frames=n_frames, track_in_reverse=req.reverse, run_mem_encoder=True)
        self._remember_pos(out["maskmem_pos_enc"])
        logits = out["pred_masks"].float()
        return StepOutput(logits, logits, out["obj_ptr"].float(), out["object_score_logits"].float(),
                          self._iou(out), out["maskmem_features"].to(torch.bfloat16))  # upstream stores memory in bf16

    def _iou(self, out: dict) -> torch.Tensor:
        if "iou_score" in out:
            return out["iou_score"].float().reshape(-1)
        return self._ious.float().max(-1).values

    @torch.inference_mode()
    def prompt(self, feats: FrameFeatures, frame_idx: int, view: MemoryView | None, *, points=None, labels=None,
               mask=None, prev_logits=None, reverse: bool = False, n_frames: int) -> StepOutput:
        """A prompt on one frame for one object: ``points`` (P, 2) model pixels with ``labels`` (P,)
        (a box is two points labelled 2, 3 first), or ``mask`` (H, W) bool at video resolution.

        ``view`` is None on a frame the object was never tracked on (an initial prompt). As in
        upstream, a prompt reads no memory (``use_prev_mem_frame=False``): on a tracked frame only
        the multimask choice and the previous logits (``prev_logits``, with points) differ."""
        self.calls["prompt"][frame_idx] += 1
        point_inputs = mask_inputs = prev = video_mask = None
        if points is not None:
            pts, lab = points.float().to(self.device), labels.int().to(self.device)
            if pts.shape[0] > MAX_PROMPT_POINTS:  # upstream keeps the first and last 8 (training's domain)
                first = MAX_PROMPT_POINTS // 2
                keep = list(range(first)) + list(range(pts.shape[0] - (MAX_PROMPT_POINTS - first), pts.shape[0]))
                log.warning("%d points on frame %d: SAM3 uses the first %d and the last %d", pts.shape[0], frame_idx,
                            first, MAX_PROMPT_POINTS - first)
                pts, lab = pts[keep], lab[keep]
            point_inputs = {"point_coords": pts[None], "point_labels": lab[None]}
            if prev_logits is not None:
                prev = torch.clamp(prev_logits[None].to(self.device).float(), -32.0, 32.0)
        elif mask is not None:
            video_mask = mask.to(self.device).bool()
            m = video_mask[None, None].float()
            size = self.tracker.input_mask_size  # 4 x the low-res size (1152 at 1008 px), not S
            if m.shape[-2:] != (size, size):
                m = F.interpolate(m, size=(size, size), align_corners=False, mode="bilinear", antialias=True)
            mask_inputs = m  # upstream does not binarise it again
        else:
            raise PromptError("a prompt needs points (or a box) or a mask")
        with self._ctx():
            vf, vp, sizes = self._features(feats, 1)
            out = self.tracker.track_step(
                frame_idx=frame_idx, is_init_cond_frame=view is None, current_vision_feats=vf,
                current_vision_pos_embeds=vp, feat_sizes=sizes, image=None, point_inputs=point_inputs,
                mask_inputs=mask_inputs, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                num_frames=n_frames, track_in_reverse=reverse, run_mem_encoder=False, prev_sam_mask_logits=prev,
                use_prev_mem_frame=False)
        if video_mask is not None:
            # upstream keeps the mask itself at video resolution (+/-1024) and reads it back at the low
            # resolution (antialiased) when it consolidates the frame: that is the memory's input
            full = torch.where(video_mask, MASK_LOGIT, -MASK_LOGIT)[None, None]
            logits = F.interpolate(full, size=(self.low_res_size,) * 2, mode="bilinear", align_corners=False,
                                   antialias=True)
            iou = torch.ones(1, device=self.device)
        else:
            logits = out["pred_masks"].float()
            iou = self._iou(out)
        return StepOutput(logits, logits, out["obj_ptr"].float(), out["object_score_logits"].float(), iou, None)

    @torch.inference_mode()
    def encode_memory(self, feats: FrameFeatures, logits: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> torch.Tensor:
        """Memory of one object on one frame from its low-res logits (1, s, s): (64, S/14, S/14) bf16.
        A prompt's memory is encoded from its binarised mask, a tracked frame's from sigmoid(logits)."""
        self.calls["encode_memory"][feats.frame_idx] += 1
        low = logits[None].to(self.device).float()
        if not from_prompt and self._tracked_masks > 1:
            # a tracking step upsamples all its candidate masks at once, and the CPU kernel's rounding
            # depends on the channel count: upsampling the chosen mask among as many gives the same bits
            low = low.expand(1, self._tracked_masks, -1, -1).contiguous()
        with self._ctx():
            vf, _, sizes = self._features(feats, 1)
            high = F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)[:, :1]
            mem, pos = self.tracker._encode_new_memory(
                image=None, current_vision_feats=vf, feat_sizes=sizes, pred_masks_high_res=high,
                object_score_logits=object_score.reshape(1, 1).to(self.device), is_mask_from_pts=from_prompt)
        self._remember_pos(pos)
        return mem[0].to(torch.bfloat16)

    def to_video_res(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 1, s, s) -> (B, H, W) float32 logits at video resolution (bilinear, as upstream)."""
        return upsample_logits(logits, height, width, self.device)

    # -- object-creating prompts --------------------------------------------------------------
    def detect(self, frame: np.ndarray, feats: FrameFeatures | None, request: DetectRequest) -> list[Detection]:
        """Text / exemplar detection on one frame (``samtrack.session.backends.sam3_detect``)."""
        try:
            from samtrack.session.backends import sam3_detect
        except ImportError as e:
            raise PromptError(f"sam3 text and exemplar detection is not available in this build ({e})") from e
        return sam3_detect.detect(self, frame, feats, request)


def _refuse(sd: dict, spec: ModelSpec, path) -> None:
    """A state dict that is no SAM3 preset samtrack builds: a CheckpointError naming what it is."""
    from samtrack.session.backends import recognise as recognise_any

    looks = recognise_any(sd)
    if looks is None:
        raise CheckpointError(f"{path} is not a SAM3 checkpoint (no {sam3_build._VIT!r} / tracker keys of the "
                              "official layout) nor one of any model samtrack knows")
    if not looks.startswith("an unregistered SAM3"):
        raise CheckpointError(f"{path} is not a SAM3 checkpoint: it looks like {looks}; pass model={looks!r}")
    raise CheckpointError(f"{path} does not match {spec.name}: it is {looks}; the nearest model samtrack builds is "
                          f"{sam3_build._nearest(sd)}")

