"""SAM2 "segment everything": samtrack's detections are upstream's automatic mask generator's,
converted as documented (masks (H, W) bool at video resolution, XYWH -> XYXY pixel-edge boxes,
predicted IoU as score, sorted, empty masks dropped), and text / exemplar prompts on a SAM2
model are refused with a PromptError that names SAM3."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtrack.errors import InvalidOptionError, PromptError
from samtrack.session.backends.base import DetectRequest
from samtrack.session.backends.sam2_backend import Sam2Backend
from samtrack.session.models import get_model
from tests.model_utils import make_checkpoint, upstream_predictor

H, W = 96, 128
FEAT_SIZES_256 = [(64, 64), (32, 32), (16, 16)]  # FPN levels at strides 4, 8, 16 of a 256 px input


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """make_checkpoint's random SAM2.1 tiny at 256 px, with the decoder's high-resolution skip
    convolutions scaled up so that not every mask is the whole frame (a non-trivial box)."""
    path = make_checkpoint(tmp_path_factory.mktemp("everything") / "tiny256.pt")
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for name in ("conv_s0", "conv_s1"):
        for p in ("weight", "bias"):
            sd[f"sam_mask_decoder.{name}.{p}"] = sd[f"sam_mask_decoder.{name}.{p}"] * 10.0
    scaled = path.with_name("tiny256_scaled.pt")  # a new file: ``path`` is a link to the shared build
    torch.save({"model": sd}, scaled)
    return scaled


@pytest.fixture(scope="module")
def backend(ckpt):
    return Sam2Backend(get_model("sam2.1_hiera_tiny"), ckpt, image_size=256, device="cpu")


@pytest.fixture(scope="module")
def upstream_model(ckpt):
    """The same checkpoint loaded by upstream's own builder (build_sam2_video_predictor)."""
    return upstream_predictor(ckpt)


@pytest.fixture(scope="module")
def frame():
    """Three bright disks on a dark, noisy background, (96, 128, 3) uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    f = np.full((H, W, 3), 30, np.int64)
    for cx, cy, r in [(30, 30, 12), (90, 40, 16), (60, 75, 10)]:
        f[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (220, 200, 180)
    return (f + rng.integers(-10, 10, f.shape)).clip(0, 255).astype(np.uint8)


def upstream_generate(model, frame, **options):
    """Upstream's generator, run directly; sorted by predicted IoU (stable), as samtrack documents."""
    from samtrack.session.backends.torchvision_compat import ensure_torchvision

    ensure_torchvision()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    amg = SAM2AutomaticMaskGenerator(model, **options)
    amg.predictor._bb_feat_sizes = FEAT_SIZES_256  # upstream hard-codes 1024 px: (256, 256), (128, 128), (64, 64)
    anns = amg.generate(frame)
    return sorted(anns, key=lambda a: -a["predicted_iou"])


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The pixel-edge box around a mask, computed here from the mask alone."""
    rows, cols = np.nonzero(mask)
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


CASES = {
    "one-crop": ({"points_per_side": 4, "stability_score_thresh": 0.0}, 0.0),
    "crop-layer": ({"points_per_side": 4, "stability_score_thresh": 0.0, "crop_n_layers": 1}, 0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_detections_equal_upstream_generator(backend, upstream_model, frame, case):
    options, threshold = CASES[case]
    dets = backend.detect(frame, None, DetectRequest(everything=True, threshold=threshold, options=options))
    ref = upstream_generate(upstream_model, frame, pred_iou_thresh=threshold, **options)
    ref = [a for a in ref if a["segmentation"].any()]
    assert len(dets) >= 1
    assert len(dets) == len(ref)
    for d, a in zip(dets, ref):
        assert d.mask.dtype == bool and d.mask.shape == (H, W)
        assert np.array_equal(d.mask, a["segmentation"])
        x, y, w, h = a["bbox"]  # upstream: XYWH, last column / row inclusive
        assert d.box == (x, y, x + w + 1, y + h + 1)
        assert d.box == mask_box(d.mask)
        assert d.score == pytest.approx(a["predicted_iou"], abs=1e-6)
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True)
    if case == "one-crop":  # the scaled skip convolutions give one mask that is not the whole frame
        assert any(d.box != (0.0, 0.0, float(W), float(H)) for d in dets)


def test_threshold_is_the_predicted_iou_threshold(backend, frame):
    options = CASES["one-crop"][0]
    everything = backend.detect(frame, None, DetectRequest(everything=True, threshold=0.0, options=options))
    scores = sorted({d.score for d in everything})
    assert len(scores) >= 2, "the test needs two distinct scores"
    t = (scores[0] + scores[1]) / 2
    kept = backend.detect(frame, None, DetectRequest(everything=True, threshold=t, options=options))
    # greedy NMS never lets a lower-scoring mask suppress a higher one: the survivors are exactly those above t
    expected = [d for d in everything if d.score > t]
    assert 1 <= len(kept) < len(everything)
    assert [d.score for d in kept] == [d.score for d in expected]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(kept, expected))


def test_empty_masks_are_dropped(backend, upstream_model, frame):
    # a binarisation threshold no logit reaches: every mask is empty, and upstream still returns them
    options = {"points_per_side": 2, "stability_score_thresh": 0.0, "mask_threshold": 1e9}
    ref = upstream_generate(upstream_model, frame, pred_iou_thresh=0.0, **options)
    assert len(ref) >= 1 and not any(a["segmentation"].any() for a in ref)
    assert backend.detect(frame, None, DetectRequest(everything=True, threshold=0.0, options=options)) == []


@pytest.mark.parametrize("request_kw", [{"text": "cell"}, {"boxes": np.array([[10.0, 10.0, 40.0, 40.0]]),
                                                           "box_labels": np.array([1])}])
def test_text_and_exemplar_prompts_need_sam3(backend, frame, request_kw):
    with pytest.raises(PromptError) as e:
        backend.detect(frame, None, DetectRequest(**request_kw))
    msg = str(e.value)
    assert "SAM3" in msg and 'model="sam3"' in msg and "everything" in msg


def test_bad_requests_say_what_is_wrong(backend, frame):
    with pytest.raises(PromptError, match="everything=True"):
        backend.detect(frame, None, DetectRequest())
    with pytest.raises(InvalidOptionError, match="points_per_sde.*known: points_per_side"):
        backend.detect(frame, None, DetectRequest(everything=True, options={"points_per_sde": 8}))
    with pytest.raises(InvalidOptionError, match="threshold"):
        backend.detect(frame, None, DetectRequest(everything=True, threshold=1.5))
    with pytest.raises(InvalidOptionError, match="points_per_side"):
        backend.detect(frame, None, DetectRequest(everything=True, options={"points_per_side": 0}))
    with pytest.raises(InvalidOptionError, match="points_per_side=1000000: at most 128"):  # not a 7 TiB grid
        backend.detect(frame, None, DetectRequest(everything=True, options={"points_per_side": 10**6}))
    with pytest.raises(PromptError, match=r"\(H, W, 3\) uint8"):
        backend.detect(frame[..., 0], None, DetectRequest(everything=True))


def test_feature_sizes_at_1024_are_upstreams():
    """At the released 1024 px the generator keeps upstream's hard-coded backbone feature sizes."""
    from samtrack.session.backends.sam2_backend import build_model
    from samtrack.session.backends.sam2_everything import generator_options, make_generator

    model = build_model(get_model("sam2.1_hiera_tiny"))
    amg = make_generator(model, generator_options(DetectRequest(everything=True)))
    assert amg.predictor._bb_feat_sizes == [(256, 256), (128, 128), (64, 64)]
    assert len(amg.point_grids[0]) == 16 * 16  # samtrack's documented default, points_per_side=16
