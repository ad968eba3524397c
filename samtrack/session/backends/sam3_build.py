"""Build SAM3's video model (detector + tracker) at any image size and width, and load checkpoints.

:func:`build_video_model` constructs the same classes, with the same arguments, as ``sam3``
0.1.4's ``build_sam3_video_model`` (a ``Sam3VideoInferenceWithInstanceInteractivity`` holding
a ``Sam3ImageOnVideoMultiGPU`` detector and a ``Sam3TrackerPredictor`` tracker), except:

- **image size** ``S`` (a multiple of 14; upstream hard-codes 1008): the ViT's ``img_size``,
  the position-encoding caches (built for ``S`` by :func:`sam3_compat.place`), the memory
  mask downsampler's ``interpol_size`` (1152 = 16 * 1008 / 14 -> 16 * S / 14), the tracker's
  RoPE ``feat_sizes`` (72 -> S / 14), the detector decoder's coordinate cache (built for
  ``S / 14``) and the tracker's and video model's ``image_size``;
- **width preset**: ``"full"`` is the official architecture (registry name ``sam3``);
  ``"tiny"`` (registry-free name ``sam3_tiny``, for tests and CPU benchmarks) has a ViT of
  width 64 and 2 blocks, a 2-layer text encoder of width 64, one encoder and one decoder layer
  in the detector's transformer and smaller feed-forward widths, with the same key names. The
  tracker is the official one in both (its width follows the detector's d_model, 256).

A checkpoint is the official layout: ``{"model": {...}}`` with ``detector.*`` and ``tracker.*``
keys, loaded strictly. The ViT's RoPE tables (``...attn.freqs_cis``, buffers that depend only on
the image size) are the one exception: a checkpoint saved at another size loads with the tables
of the size being built (:data:`REGENERATED`), so an official 1008 px checkpoint runs at 560 px.

The text encoder's BPE vocabulary ``bpe_simple_vocab_16e6.txt.gz`` is not in the ``sam3`` wheel;
:func:`bpe_path` finds it (``$SAMTRACK_SAM3_BPE``, where ``sam3`` looks for it, or the identical
file inside ``open_clip_torch``).
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from samtrack.errors import CheckpointError, InvalidOptionError
from samtrack.session.backends import sam3_compat

DEFAULT_SIZE = 1008
STRIDE = 14  # the ViT's patch size: features are S / 14
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_INSTALL = (f"SAM3's text encoder needs its BPE vocabulary {BPE_NAME}, which the sam3 wheel does not ship: "
               "`pip install open_clip_torch` (it ships the identical file) or set SAMTRACK_SAM3_BPE to the file")
REGENERATED = ".attn.freqs_cis"  # ViT RoPE tables: functions of the image size, rebuilt rather than loaded

# state-dict keys that say what a checkpoint is (the official layout)
_VIT = "detector.backbone.vision_backbone.trunk."
_TEXT = "detector.backbone.language_backbone.encoder."
_TRACKER = "tracker.sam_mask_decoder."


@dataclass(frozen=True)
class Preset:
    """Widths and depths of one SAM3 build (everything else is the official architecture)."""

    name: str  # registry name of the model this preset builds
    vit_dim: int
    vit_depth: int
    vit_heads: int
    global_blocks: tuple[int, ...]
    text_width: int
    text_heads: int
    text_layers: int
    enc_layers: int  # detector transformer encoder
    dec_layers: int  # detector transformer decoder
    ffn: int  # feed-forward width of the detector's transformer and geometry encoder
    geo_layers: int
    scoring_hidden: int  # dot-product scoring MLP

    def describe(self) -> str:
        return (f"ViT width {self.vit_dim}, {self.vit_depth} blocks, text encoder width {self.text_width}, "
                f"{self.text_layers} layers")


PRESETS: dict[str, Preset] = {
    "full": Preset("sam3", 1024, 32, 16, (7, 15, 23, 31), 1024, 16, 24, 6, 6, 2048, 3, 2048),
    "tiny": Preset("sam3_tiny", 64, 2, 2, (1,), 64, 2, 2, 1, 1, 256, 1, 256),
}


def check_image_size(image_size: int) -> int:
    s = int(image_size)
    if s % STRIDE or s < 4 * STRIDE:
        raise InvalidOptionError(f"image_size={image_size}: SAM3 needs a multiple of {STRIDE}, at least "
                                 f"{4 * STRIDE} (e.g. 1008, the default, 672, 560 or 336)")
    return s


def bpe_path(explicit: str | os.PathLike | None = None) -> str:
    """The BPE vocabulary file: ``explicit``, ``$SAMTRACK_SAM3_BPE``, ``<site-packages>/assets/`` (where
    ``sam3`` looks), or ``open_clip/`` (the ``open_clip_torch`` wheel). CheckpointError when none exists."""
    cands = [explicit, os.environ.get("SAMTRACK_SAM3_BPE")]
    for pkg, rel in (("sam3", Path("..") / "assets" / BPE_NAME), ("open_clip", Path(BPE_NAME))):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            cands.append(Path(list(spec.submodule_search_locations)[0]) / rel)
    for c in cands:
        if c and Path(c).is_file():
            return str(Path(c).resolve())
    raise CheckpointError(BPE_INSTALL)


# -- the model ------------------------------------------------------------------------------
def _position_encoding(num_pos_feats: int, precompute: int | None):
    from sam3.model.position_encoding import PositionEmbeddingSine

    pe = PositionEmbeddingSine(num_pos_feats=num_pos_feats, normalize=True, scale=None, temperature=10000,
                               precompute_resolution=None)  # upstream precomputes on "cuda": see place()
    pe._samtrack_precompute = precompute
    return pe


def _tracker(S: int, memory_selection: bool):
    """``model_builder.build_tracker`` at image size S."""
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    f = S // STRIDE
    maskmem = SimpleMaskEncoder(
        out_dim=64, position_encoding=_position_encoding(64, S),
        mask_downsampler=SimpleMaskDownSampler(kernel_size=3, stride=2, padding=1, interpol_size=[16 * f, 16 * f]),
        fuser=SimpleFuser(layer=CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06,
                                        use_dwconv=True), num_layers=2))
    layer = TransformerDecoderLayerv2(
        cross_attention_first=False, activation="relu", dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False,
        pre_norm=True, d_model=256, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(embedding_dim=256, num_heads=1, downsample_rate=1, dropout=0.1,
                                     rope_theta=10000.0, feat_sizes=[f, f], use_fa3=False, use_rope_real=False),
        cross_attention=RoPEAttention(embedding_dim=256, num_heads=1, downsample_rate=1, dropout=0.1, kv_in_dim=64,
                                      rope_theta=10000.0, feat_sizes=[f, f], rope_k_repeat=True, use_fa3=False,
                                      use_rope_real=False))
    encoder = TransformerEncoderCrossAttention(remove_cross_attention_layers=[], batch_first=True, d_model=256,
                                               frozen=False, pos_enc_at_input=True, layer=layer, num_layers=4,
                                               use_act_checkpoint=False)
    tracker = Sam3TrackerPredictor(
        image_size=S, num_maskmem=7, backbone=None, backbone_stride=STRIDE,
        transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=256), maskmem_backbone=maskmem,
        multimask_output_in_sam=True, forward_backbone_per_frame_for_eval=True, trim_past_non_cond_mem_for_eval=False,
        multimask_output_for_tracking=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        always_start_from_first_ann_frame=False, non_overlap_masks_for_mem_enc=False, non_overlap_masks_for_output=False,
        max_cond_frames_in_attn=4, offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
        clear_non_cond_mem_around_input=True, fill_hole_area=0, use_memory_selection=memory_selection)
    sam3_compat.release_autocast(tracker)
    return tracker


def _init_text_tables(encoder) -> None:
    """``sam3``'s ``TextTransformer`` makes ``positional_embedding`` and ``text_projection`` with
    ``torch.empty`` and never initialises them: untrained weights would hold whatever memory was
    there (NaN seen here, so every text score is NaN) and differ between runs. Filled as open_clip's
    ``init_parameters`` does (std 0.01 and width ** -0.5), from a generator of their own so that no
    other weight changes. A checkpoint overwrites both."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        encoder.positional_embedding.copy_(torch.randn(encoder.positional_embedding.shape, generator=g) * 0.01)
        proj = getattr(encoder, "text_projection", None)
        if isinstance(proj, torch.nn.Parameter):
            proj.copy_(torch.randn(proj.shape, generator=g) * encoder.width ** -0.5)


def _detector(S: int, p: Preset, bpe: str):
    """The detector of ``build_sam3_video_model`` (vision neck with the tracker's second neck, text
    encoder, transformer, segmentation head, geometry encoder, dot-product scoring) at S and preset p."""
    from torch import nn

    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    vit = ViT(img_size=S, pretrain_img_size=336, patch_size=STRIDE, embed_dim=p.vit_dim, depth=p.vit_depth,
              num_heads=p.vit_heads, mlp_ratio=4.625, norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True,
              use_abs_pos=True, tile_abs_pos=True, global_att_blocks=p.global_blocks, rel_pos_blocks=(),
              use_rope=True, use_interp_rope=True, window_size=24, pretrain_use_cls_token=True,
              retain_cls_token=False, ln_pre=True, ln_post=False, return_interm_layers=False,
              bias_patch_embed=False, compile_mode=None)
    neck = Sam3DualViTDetNeck(position_encoding=_position_encoding(256, S), d_model=256,
                              scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit, add_sam2_neck=True)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe), d_model=256, width=p.text_width,
                         heads=p.text_heads, layers=p.text_layers)
    _init_text_tables(text.encoder)
    backbone = SAM3VLBackbone(scalp=1, visual=neck, text=text)

    def mha(dropout=0.1, **kw):
        return MultiheadAttention(num_heads=8, dropout=dropout, embed_dim=256, **kw)

    enc_layer = TransformerEncoderLayer(
        activation="relu", d_model=256, dim_feedforward=p.ffn, dropout=0.1, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=mha(batch_first=True), cross_attention=mha(batch_first=True))
    encoder = TransformerEncoderFusion(layer=enc_layer, num_layers=p.enc_layers, d_model=256, num_feature_levels=1,
                                       frozen=False, use_act_checkpoint=True, add_pooled_text_to_img_feat=False,
                                       pool_text_with_mask=True)
    dec_layer = TransformerDecoderLayer(activation="relu", d_model=256, dim_feedforward=p.ffn, dropout=0.1,
                                        cross_attention=mha(), n_heads=8, use_text_cross_attention=True)
    decoder = TransformerDecoder(layer=dec_layer, num_layers=p.dec_layers, num_queries=200, return_intermediate=True,
                                 box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=256,
                                 frozen=False, interaction_layer=None, dac_use_selfatt_ln=True,
                                 resolution=None,  # upstream: 1008, cached on "cuda"; place() caches S / 14
                                 stride=STRIDE, use_act_checkpoint=True, presence_token=True)
    transformer = TransformerWrapper(encoder=encoder, decoder=decoder, d_model=256)
    seg_head = UniversalSegmentationHead(
        hidden_dim=256, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=True, cross_attend_prompt=mha(dropout=0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=256,
                                   compile_mode=None))
    geo_layer = TransformerEncoderLayer(
        activation="relu", d_model=256, dim_feedforward=p.ffn, dropout=0.1, pos_enc_at_attn=False, pre_norm=True,
        self_attention=mha(batch_first=False), pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=mha(batch_first=False))
    geometry = SequenceGeometryEncoder(
        pos_enc=_position_encoding(256, None), encode_boxes_as_points=False, points_direct_project=True,
        points_pool=True, points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True,
        d_model=256, num_layers=p.geo_layers, layer=geo_layer, use_act_ckpt=True, add_cls=True,
        add_post_encode_proj=True)
    scoring = DotProductScoring(d_model=256, d_proj=256, prompt_mlp=MLP(
        input_dim=256, hidden_dim=p.scoring_hidden, output_dim=256, num_layers=2, dropout=0.1, residual=True,
        out_norm=nn.LayerNorm(256)))
    return Sam3ImageOnVideoMultiGPU(
        num_feature_levels=1, backbone=backbone, transformer=transformer, segmentation_head=seg_head,
        semantic_segmentation_head=None, input_geometry_encoder=geometry, use_early_fusion=True,
        use_dot_prod_scoring=True, dot_prod_scoring=scoring, supervise_joint_box_scores=True)


def build_video_model(image_size: int = DEFAULT_SIZE, width: str = "full", *, bpe: str | None = None,
                      memory_selection: bool = True, device: torch.device | str = "cpu"):
    """SAM3's video model with random weights (seed it first), in eval mode, on ``device``.

    ``memory_selection``: upstream's ``apply_temporal_disambiguation`` (True in
    ``build_sam3_video_model``'s default): memory selection in the tracker and the video model's
    hot-start heuristics. Raises InvalidOptionError for a bad size or width, CheckpointError
    when the BPE vocabulary is missing."""
    sam3_compat.ensure_importable()
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    S = check_image_size(image_size)
    try:
        p = PRESETS[width]
    except KeyError:
        raise InvalidOptionError(f"SAM3 width={width!r}: use one of {', '.join(PRESETS)}") from None
    with sam3_compat.quiet_cpu_autocast():
        tracker = _tracker(S, memory_selection)
    detector = _detector(S, p, bpe_path(bpe))
    heuristics = dict(hotstart_delay=15, hotstart_unmatch_thresh=8, hotstart_dup_thresh=8,
                      recondition_every_nth_frame=16) if memory_selection else dict(
        hotstart_delay=0, hotstart_unmatch_thresh=0, hotstart_dup_thresh=0, recondition_every_nth_frame=0)
    model = Sam3VideoInferenceWithInstanceInteractivity(
        detector=detector, tracker=tracker, score_threshold_detection=0.5, assoc_iou_thresh=0.1, det_nms_thresh=0.1,
        new_det_thresh=0.7, suppress_unmatched_only_within_hotstart=True, min_trk_keep_alive=-1,
        max_trk_keep_alive=30, init_trk_keep_alive=30, suppress_overlapping_based_on_recent_occlusion_threshold=0.7,
        suppress_det_close_to_boundary=False, fill_hole_area=16, masklet_confirmation_enable=False,
        decrease_trk_keep_alive_for_empty_masklets=False, image_size=S, image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5), compile_model=False, **heuristics)
    sam3_compat.route_sam3_logs()  # loggers sam3 made while building
    model._samtrack_preset = p
    device = torch.device(device)
    model.to(device).eval()
    sam3_compat.place(model, device, S, STRIDE)
    return model


# -- checkpoints ----------------------------------------------------------------------------
def describe(sd: dict) -> dict | None:
    """Widths and depths read from an official-layout state dict, or None when it is not SAM3."""
    pe = sd.get(_VIT + "patch_embed.proj.weight")
    if pe is None or not any(k.startswith(_TRACKER) for k in sd):
        return None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(re.escape(_VIT) + r"blocks\.(\d+)\.", k))}
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.", k))}
    tok = sd.get(_TEXT + "token_embedding.weight")
    size = None
    last = sd.get(f"{_VIT}blocks.{max(blocks)}{REGENERATED}") if blocks else None
    if last is not None:  # the last block attends globally: (S / 14)^2 rows (window blocks have 24^2)
        side = int(round(int(last.shape[0]) ** 0.5))
        size = side * STRIDE if side * side == int(last.shape[0]) else None
    return {"vit_dim": int(pe.shape[0]), "vit_depth": max(blocks) + 1 if blocks else 0,
            "text_width": int(tok.shape[1]) if tok is not None else 0, "text_layers": max(layers) + 1 if layers else 0,
            "image_size": size}


def preset_of(sd: dict) -> Preset | None:
    d = describe(sd)
    if d is None:
        return None
    for p in PRESETS.values():
        if (p.vit_dim, p.vit_depth, p.text_width, p.text_layers) == (d["vit_dim"], d["vit_depth"], d["text_width"],
                                                                      d["text_layers"]):
            return p
    return None


def recognise(sd: dict) -> str | None:
    """``"sam3"`` (the official architecture), ``"sam3_tiny"`` (the test preset), a description of an
    unregistered SAM3, or None when ``sd`` is not a SAM3 state dict in the official layout."""
    d = describe(sd)
    if d is None:
        return None
    p = preset_of(sd)
    if p is not None:
        return p.name
    return (f"an unregistered SAM3 (ViT width {d['vit_dim']}, {d['vit_depth']} blocks, text encoder width "
            f"{d['text_width']}, {d['text_layers']} layers)")


def saved_image_size(sd: dict) -> int | None:
    """The image size a checkpoint's ViT RoPE tables were made for (1008 for the official file)."""
    d = describe(sd)
    return d["image_size"] if d else None


def check_state_dict(sd: dict, model_sd: dict, name: str, path) -> dict:
    """``sd`` ready for a strict load into a model whose state dict is ``model_sd``: RoPE tables of
    another image size are replaced by the model's own. Raises CheckpointError naming what the
    checkpoint looks like when keys or shapes differ."""
    sd = dict(sd)
    for k, v in model_sd.items():
        if k.endswith(REGENERATED) and k in sd and tuple(sd[k].shape) != tuple(v.shape):
            sd[k] = v.detach().clone()
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    shape = [k for k in model_sd if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    if missing or unexpected or shape:
        from samtrack.session.backends import recognise as recognise_any

        looks = recognise_any(sd)
        if looks is None:
            hint = "it is not a checkpoint of any model samtrack knows"
        elif looks == name:
            hint = "it is damaged or was saved by another sam3 version"
        elif looks.startswith("an unregistered SAM3"):
            hint = f"it is {looks}; the nearest model samtrack builds is {_nearest(sd)}"
        else:
            hint = f"it looks like {looks}: pass model={looks!r}"
        raise CheckpointError(
            f"{path} does not match {name} ({len(missing)} missing, {len(unexpected)} unexpected, {len(shape)} "
            f"mis-shaped tensors, e.g. {(missing + unexpected + shape)[:2]}); {hint}")
    return sd


def _nearest(sd: dict) -> str:
    d = describe(sd) or {}
    best = min(PRESETS.values(), key=lambda p: abs(p.vit_dim - d.get("vit_dim", 0)) + abs(p.vit_depth - d.get(
        "vit_depth", 0)) * 32 + abs(p.text_width - d.get("text_width", 0)))
    return f"{best.name} ({best.describe()})"
