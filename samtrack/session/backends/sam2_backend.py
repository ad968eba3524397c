"""SAM2 / SAM2.1 through the ``sam2`` package, driving ``SAM2Base`` directly.

The model is built exactly as ``build_sam2_video_predictor`` builds it (same
class, same post-processing overrides), so the same checkpoint behaves the
same. Each step hands ``SAM2Base._track_step`` an ``output_dict`` that holds
only the frames its memory attention reads, assembled from the MemoryBank,
with the objects of one frame stacked into one batch (upstream loops over
objects one by one).
"""
from __future__ import annotations

import collections
import logging
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

import re

import numpy as np

from samtrack.errors import CheckpointError, InvalidOptionError
from samtrack.io.model_input import SAM_MEAN, SAM_STD, InputSpec
from samtrack.session.backends.base import (FrameFeatures, MemoryEntry, MemoryView, StepOutput, TrackRequest,
                                            frames_by_position, upsample_logits)
from samtrack.session.checkpoints import load_state_dict
from samtrack.session.devices import pick_device  # noqa: F401  (re-exported for earlier callers)
from samtrack.session.models import MODELS, ModelSpec

FAMILY = "sam2"
NO_OBJ_SCORE = -1024.0  # sam2/modeling/sam2_base.py NO_OBJ_SCORE: the logit of "no mask here"

log = logging.getLogger(__name__)

# what build_sam2_video_predictor(apply_postprocessing=True) adds
POSTPROCESSING = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]


def hydra_overrides(image_size: int | None, extra: Sequence[str] = ()) -> list[str]:
    """Overrides for a model at ``image_size``: the RoPE feature size follows (S / 16)."""
    ov = ["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor", *POSTPROCESSING]
    if image_size is not None:
        if image_size % 16 or image_size < 64:
            raise InvalidOptionError(f"image_size={image_size}: use a multiple of 16, at least 64 (e.g. 512, 1024)")
        f = image_size // 16
        ov += [f"++model.image_size={image_size}",
               f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
               f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]"]
    return ov + list(extra)


def build_model(spec: ModelSpec, *, image_size: int | None = None, extra_overrides: Sequence[str] = ()):
    """The upstream video model module with random weights (load a checkpoint next)."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (initializes sam2's Hydra config module on import)

    cfg = compose(config_name=spec.config, overrides=hydra_overrides(image_size, extra_overrides))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def recognise(sd: dict) -> str | None:
    """Which registered SAM2/SAM2.1 model a state dict is (by Hiera depth, width and the 2.1-only
    ``no_obj_embed_spatial``), a description of an unregistered Hiera, or None when it is not SAM2."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if not blocks or w is None:
        return None
    n, dim = max(blocks) + 1, int(w.shape[0])
    family = "sam2.1" if "no_obj_embed_spatial" in sd else "sam2"
    for spec in MODELS.values():
        if spec.family == family and spec.trunk_blocks == n and spec.embed_dim == dim:
            return spec.name
    return f"an unregistered Hiera ({n} blocks, width {dim}, {family})"


def check_state_dict(sd: dict, model_sd: dict, spec: ModelSpec, path) -> None:
    """Raise a CheckpointError naming the model the checkpoint looks like when keys/shapes differ."""
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    shape = [k for k in model_sd if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)
             and not k.endswith(("pos_embed", "pos_embed_window"))]
    if missing or unexpected or shape:
        from samtrack.session.backends import recognise as recognise_any

        looks = recognise_any(sd)
        hint = (f"it looks like {looks}: pass model={looks!r}" if looks and looks != spec.name
                else "it is not a SAM2 checkpoint of this architecture")
        raise CheckpointError(
            f"{path} does not match {spec.name} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shape)} mis-shaped tensors, e.g. {(missing + unexpected + shape)[:2]}); {hint}")


class Sam2Backend:
    """Adapter of one loaded SAM2/SAM2.1 model. Not thread-safe: one session drives it."""

    family = FAMILY
    no_object_logit = NO_OBJ_SCORE
    object_queries = frozenset({"everything"})  # detect(): sam2's automatic mask generator

    def __init__(self, spec: ModelSpec, checkpoint, *, image_size: int | None = None, device="auto",
                 extra_overrides: Sequence[str] = ()):
        self.spec = spec
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        with torch.random.fork_rng(devices=[]):
            if checkpoint is None:  # untrained: the same random weights in every process (a resumed job agrees)
                torch.manual_seed(0)
            model = build_model(spec, image_size=image_size, extra_overrides=extra_overrides)
        if checkpoint is not None:
            sd = load_state_dict(checkpoint)
            check_state_dict(sd, model.state_dict(), spec, checkpoint)
            model.load_state_dict(sd, strict=True)
        self.model = model.to(self.device).eval()
        self.image_size = int(model.image_size)
        self.input_spec = InputSpec(self.image_size, SAM_MEAN, SAM_STD)  # sam2/utils/misc.py load_video_frames
        self.low_res_size = self.image_size // 4  # the mask decoder's output: 4x the stride-16 features
        self.num_maskmem = int(model.num_maskmem)
        self.max_obj_ptrs = int(model.max_obj_ptrs_in_encoder)
        self.stride = int(model.memory_temporal_stride_for_eval)
        self.autocast = self.device.type == "cuda"  # bf16 on CUDA, as upstream's notebooks run it
        self._pos_enc: list[torch.Tensor] | None = None
        self._fpn_pos_cache: dict[tuple, list[torch.Tensor]] = {}
        self._holes_ok = True
        self._graphs = None  # sam2_graphs.GraphedTracker when cuda_graphs is on
        self.calls: dict = {"encode_image": collections.Counter(), "track": collections.Counter(),
                            "prompt": collections.Counter(), "encode_memory": collections.Counter()}

    # -- prompts ------------------------------------------------------------
    def map_points(self, points: np.ndarray, width: int, height: int) -> torch.Tensor:
        """(N, 2) (x, y) video pixels -> model input pixels, as upstream's ``add_new_points_or_box``
        with ``normalize_coords=True`` (x / W * S, y / H * S)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        return pts / torch.tensor([width, height], dtype=torch.float32) * self.image_size

    # -- frames -------------------------------------------------------------
    def _ctx(self):
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures:
        """``image``: (3, S, S) float32 normalized. Returns features for batch 1."""
        self.calls["encode_image"][frame_idx] += 1
        with self._ctx():
            out = self.model.forward_image(image.to(self.device, non_blocking=True).float()[None])
        # upstream's sine encoding (sam2/modeling/position_encoding.py, _pe) returns a permuted view the first
        # time a shape is seen and a contiguous copy of the same values after: one layout for every frame (the
        # first one included, and frames read back from the feature store), so every frame's step runs the
        # same kernels and a stored frame tracks bit for bit as a fresh one (layouts change the rounding of
        # the CPU's AVX-512 kernels)
        out["vision_pos_enc"] = [p.contiguous() for p in out["vision_pos_enc"]]
        key = tuple((tuple(t.shape[-2:]), t.dtype) for t in out["backbone_fpn"])
        self._fpn_pos_cache.setdefault(key, out["vision_pos_enc"])
        return FrameFeatures(frame_idx, out)

    # -- stored features (the session's FeatureStore keeps what this returns) --------
    def features_to_store(self, feats: FrameFeatures) -> dict[str, torch.Tensor]:
        """The rows worth keeping of a frame's features: the three FPN levels (batch dimension
        dropped), as the encoder produced them, so that a frame read back tracks exactly as a fresh
        one: float32 on the CPU, bfloat16 under CUDA autocast. At 1024 px: (32, 256, 256),
        (64, 128, 128), (256, 64, 64). Position encodings depend on the shapes only: not stored."""
        return {f"fpn{i}": t[0] for i, t in enumerate(feats.data["backbone_fpn"])}

    def features_from_store(self, rows: dict[str, torch.Tensor], frame_idx: int) -> FrameFeatures:
        """Inverse of :meth:`features_to_store` (rows on any device; moved to this backend's)."""
        fpn = [rows[f"fpn{i}"][None].to(self.device, non_blocking=True) for i in range(len(rows))]
        return FrameFeatures(frame_idx, {"vision_features": fpn[-1], "vision_pos_enc": self._fpn_pos(fpn),
                                         "backbone_fpn": fpn})

    def _fpn_pos(self, fpn: list[torch.Tensor]) -> list[torch.Tensor]:
        """The neck's position encodings of FPN levels of these shapes (sine encodings: shape only)."""
        key = tuple((tuple(t.shape[-2:]), t.dtype) for t in fpn)
        pos = self._fpn_pos_cache.get(key)
        if pos is None:
            neck = self.model.image_encoder.neck
            with torch.inference_mode():
                pos = [neck.position_encoding(torch.zeros(1, neck.d_model, *t.shape[-2:], device=self.device))
                       .to(t.dtype).contiguous() for t in fpn]  # the layout encode_image gives
            self._fpn_pos_cache[key] = pos
        return pos

    def _features(self, feats: FrameFeatures, batch: int):
        bo = feats.data
        expanded = {"backbone_fpn": [x.expand(batch, -1, -1, -1) for x in bo["backbone_fpn"]],
                    "vision_pos_enc": [x.expand(batch, -1, -1, -1) for x in bo["vision_pos_enc"]]}
        _, vision_feats, vision_pos, sizes = self.model._prepare_backbone_features(expanded)
        return vision_feats, vision_pos, sizes

    # -- which frames attention reads (mirrors _prepare_memory_conditioned_features) --
    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int,
                    history=None) -> list[int]:
        """Non-keyframe frame indices this step may read (memory and object pointers); SAM2's rule
        depends on positions only, so ``history`` is not used."""
        return frames_by_position(frame_idx, reverse, n_frames, self.num_maskmem, self.max_obj_ptrs, self.stride)

    def _output_dict(self, views: Sequence[MemoryView], frames: Sequence[int]) -> dict:
        """Upstream's per-object output_dict, for a batch of objects that read the same frames."""
        cond = {t: self._stack([v.cond[t] for v in views]) for t in views[0].cond}
        other = {}
        for t in frames:
            es = [v.other.get(t) for v in views]
            if es[0] is not None:
                other[t] = self._stack(es)
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": other}

    def _stack(self, entries: Sequence[MemoryEntry]) -> dict:
        dev = self.device
        # entries of one batch may sit in different tiers (device, pinned host): move each, then stack
        feats = torch.stack([e.maskmem.to(dev, non_blocking=True) for e in entries])
        if not self.autocast:
            # memory is stored in bf16 as upstream does. Upstream's attention input is the concat of
            # memories and float32 pointers, which promotes bf16 exactly to float32; with no pointer
            # among what a frame reads (a re-prompted keyframe with only later keyframes), the bf16
            # input met float32 weights and crashed on the CPU. Promoting here is the same values.
            feats = feats.float()
        ptr = torch.stack([e.obj_ptr.to(dev, non_blocking=True) for e in entries])
        return {"maskmem_features": feats, "maskmem_pos_enc": self._expand_pos(len(entries)), "obj_ptr": ptr}

    def _expand_pos(self, batch: int):
        if self._pos_enc is None:
            raise RuntimeError("memory position encoding is not known before the first memory encoding")
        return [x.expand(batch, -1, -1, -1) for x in self._pos_enc]

    # -- steps ----------------------------------------------------------------
    def batch_key(self, view: MemoryView, frame_idx: int, reverse: bool, n_frames: int, *, pad: bool):
        """Objects whose keys are equal run as one batch. ``pad``: every object in one batch, read sets
        padded to the longest (one launch per frame: what a GPU wants); else objects whose read sets
        have the same shape (no padding computed: what a CPU wants, where padding costs compute)."""
        if pad:
            return ()
        from samtrack.session.backends.sam2_padded import read_set

        return read_set(self.model, view, frame_idx, reverse, n_frames).shape

    @torch.inference_mode()
    def track(self, feats: FrameFeatures, req: TrackRequest, n_frames: int) -> StepOutput:
        """One tracking step for a batch of objects. Each object's memory read set is assembled as
        upstream's ``_prepare_memory_conditioned_features`` would for it alone; objects reading
        different frames (or different numbers of frames) share the batch, shorter read sets padded
        and masked out of memory attention (``sam2_padded``)."""
        from samtrack.session.backends import sam2_padded as pad

        b = len(req.views)
        self.calls["track"][req.frame_idx] += b
        sets = [pad.read_set(self.model, v, req.frame_idx, req.reverse, n_frames) for v in req.views]
        with self._ctx():
            vf, vp, sizes = self._features(feats, b)
            if self._graphs is not None:
                replayed = self._graphs.run(vf, vp, sizes, sets, self._memory_pos(), n_frames)
                if replayed is not None:
                    ious, low_res, obj_ptr, score, maskmem = replayed
                    return self._outputs(vf, sizes, (None, None, ious, low_res, None, obj_ptr, score), None,
                                         run_mem_encoder=False, from_prompt=False, maskmem=maskmem)
            mem = pad.assemble(self.model, sets, self._memory_pos(), n_frames, self.device)
            sam_out = pad.track_heads(self.model, vf, vp, sizes, mem)
            return self._outputs(vf, sizes, sam_out, None, run_mem_encoder=True, from_prompt=False)

    @property
    def cuda_graphs(self) -> bool:
        """Whether tracking steps replay CUDA graphs (``sam2_graphs``); settable. Setting it True on
        a backend whose device is not CUDA raises InvalidOptionError."""
        return self._graphs is not None and self._graphs.enabled

    @cuda_graphs.setter
    def cuda_graphs(self, on: bool) -> None:
        """True: a new GraphedTracker (also after a self-check turned graphs off); False: eager steps.
        Raises InvalidOptionError for True on a device that is not CUDA."""
        if not on:
            self._graphs = None
            return
        if self.device.type != "cuda":
            raise InvalidOptionError(f"CUDA graphs need a CUDA device (this model runs on {self.device}): "
                                     "leave cuda_graphs unset (None) or False")
        if self._graphs is None or not self._graphs.enabled:  # (again after a self-check turned them off)
            from samtrack.session.backends.sam2_graphs import GraphedTracker

            self._graphs = GraphedTracker(self.model, self.device, self._graph_ctx)

    def _graph_ctx(self):
        """Autocast for a captured step: bf16 as eager, without autocast's weight cache (a cached cast
        made during capture would be freed with the capture's temporaries)."""
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        import contextlib

        return contextlib.nullcontext()

    def _memory_pos(self) -> torch.Tensor:
        if self._pos_enc is None:
            raise RuntimeError("memory position encoding is not known before the first memory encoding")
        return self._pos_enc[-1]

    @torch.inference_mode()
    def prompt(self, feats: FrameFeatures, frame_idx: int, view: MemoryView | None, *, points=None, labels=None,
               mask=None, prev_logits=None, reverse: bool = False, n_frames: int) -> StepOutput:
        """A prompt on one frame for one object. ``points``: (P, 2) in model pixels (0..S), labels (P,).

        ``view`` is None for a first prompt (no memory, like SAM on an image), else
        the object's memory, for a correction on a tracked frame.
        """
        self.calls["prompt"][frame_idx] += 1
        point_inputs = None
        if points is not None:
            point_inputs = {"point_coords": points[None].float().to(self.device),
                            "point_labels": labels[None].int().to(self.device)}
        mask_inputs = None
        if mask is not None:
            m = mask[None, None].float().to(self.device)
            if m.shape[-2:] != (self.image_size, self.image_size):
                m = F.interpolate(m, size=(self.image_size, self.image_size), align_corners=False,
                                  mode="bilinear", antialias=True)
                m = (m >= 0.5).float()
            mask_inputs = m
        prev = None
        if prev_logits is not None and point_inputs is not None:
            prev = torch.clamp(prev_logits[None].to(self.device), -32.0, 32.0)
        with self._ctx():
            vf, vp, sizes = self._features(feats, 1)
            if view is None:
                od = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            else:
                od = self._output_dict([view], self.frames_read(frame_idx, reverse, list(view.cond), n_frames))
            return self._step(frame_idx, view is None, vf, vp, sizes, point_inputs, mask_inputs, od, n_frames,
                              reverse, prev, run_mem_encoder=False, from_prompt=True)

    def _step(self, frame_idx, is_init, vf, vp, sizes, point_inputs, mask_inputs, od, n_frames, reverse, prev,
              *, run_mem_encoder: bool, from_prompt: bool) -> StepOutput:
        _, sam_out, _, _ = self.model._track_step(frame_idx, is_init, vf, vp, sizes, point_inputs, mask_inputs, od,
                                                  n_frames, reverse, prev)
        return self._outputs(vf, sizes, sam_out, point_inputs, run_mem_encoder=run_mem_encoder,
                             from_prompt=from_prompt)

    def _outputs(self, vf, sizes, sam_out, point_inputs, *, run_mem_encoder: bool, from_prompt: bool,
                 maskmem: torch.Tensor | None = None) -> StepOutput:
        """A step's StepOutput from upstream's SAM-head outputs: memory encoded (tracking steps;
        ``maskmem`` when it was already), small holes filled as upstream's predictor does (with
        sam2's CUDA extension)."""
        from sam2.utils.misc import fill_holes_in_mask_scores

        m = self.model
        _, _, ious, low_res, high_res, obj_ptr, score = sam_out
        if maskmem is not None:
            maskmem = maskmem.to(torch.bfloat16)
        elif run_mem_encoder and self.num_maskmem > 0:
            maskmem, pos = m._encode_new_memory(vf, sizes, high_res, score, is_mask_from_pts=point_inputs is not None)
            self._remember_pos(pos)
            maskmem = maskmem.to(torch.bfloat16)  # upstream stores memory in bf16
        out_logits = low_res.float()
        if getattr(m, "fill_hole_area", 0) > 0 and self._holes_ok:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out_logits = fill_holes_in_mask_scores(out_logits, m.fill_hole_area)
            if caught:  # no CUDA extension: upstream skips hole filling too; say so once
                self._holes_ok = False
                log.info("sam2's CUDA extension is not available: small holes in masks are not filled (as upstream)")
        # memory of a prompt is encoded later from the output; of a tracked frame, from the raw logits
        mem_logits = out_logits if from_prompt else low_res.float()
        return StepOutput(out_logits, mem_logits, obj_ptr.float(), score.float(), ious.float().max(-1).values,
                          maskmem)

    def _remember_pos(self, pos) -> None:
        if self._pos_enc is None:
            self._pos_enc = [x[0:1].clone() for x in pos]

    @torch.inference_mode()
    def encode_memory(self, feats: FrameFeatures, logits: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> torch.Tensor:
        """Memory of one object on one frame from its low-res logits (1, s, s): (Cm, h, w) bf16."""
        self.calls["encode_memory"][feats.frame_idx] += 1
        with self._ctx():
            vf, _, sizes = self._features(feats, 1)
            high = F.interpolate(logits[None].to(self.device), size=(self.image_size, self.image_size),
                                 mode="bilinear", align_corners=False)
            mem, pos = self.model._encode_new_memory(vf, sizes, high, object_score[None].to(self.device),
                                                     is_mask_from_pts=from_prompt)
        self._remember_pos(pos)
        return mem[0].to(torch.bfloat16)

    def to_video_res(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 1, s, s) -> (B, H, W) float32 logits at video resolution (bilinear, as upstream)."""
        return upsample_logits(logits, height, width, self.device)

    def detect(self, frame: np.ndarray, feats: FrameFeatures | None, request) -> list:
        """Object-creating prompt (a ``base.DetectRequest``) on one frame -> ``list[base.Detection]``.

        SAM2 has "everything" only (``request.everything``): sam2's automatic mask generator on
        ``frame``, (H, W, 3) uint8 RGB; see :func:`sam2_everything.segment_everything` for options,
        threshold, box convention and order. ``feats`` is not used (the generator encodes the frame
        through sam2's own image transforms, as upstream). A text or exemplar-box request raises
        :class:`~samtrack.errors.PromptError` (those need SAM3), as does a request asking for nothing."""
        from samtrack.errors import PromptError
        from samtrack.session.backends.sam2_everything import segment_everything

        if request.text is not None or request.boxes is not None:
            raise PromptError(f"{self.spec.name} is a SAM2 model: text and exemplar-box prompts need a SAM3 model "
                              '(open the session with model="sam3"); with SAM2, "everything" (segment every '
                              "object on a frame) works")
        if not request.everything:
            raise PromptError('an empty detect request: give everything=True (SAM2), or text / exemplar boxes '
                              '(SAM3, model="sam3")')
        return segment_everything(self.model, frame, request, autocast=self.autocast)


def load(spec: ModelSpec, checkpoint, **kw) -> Sam2Backend:
    """The registry's entry point: ``Sam2Backend(spec, checkpoint, image_size=, device=, extra_overrides=)``."""
    try:
        return Sam2Backend(spec, checkpoint, **kw)
    except ImportError as e:
        raise CheckpointError(f"the sam2 package is not installed ({e}): run `make setup` or "
                              "`SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0`") from e


load_backend = load  # the name earlier releases exported
