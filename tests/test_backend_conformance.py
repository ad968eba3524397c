"""The Backend protocol (samtrack/session/backends/base.py), checked against every registered backend.

Each backend is loaded through the registry as a user's session loads it, with a small
random-init model; the checks are about the contract (shapes, dtypes, devices, errors, the
store round trip, point mapping, recognition of its own checkpoints), not about mask quality,
which the fidelity tests cover against upstream.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from samtrack.errors import CheckpointError, PromptError
from samtrack.session import backends
from samtrack.session.backends.base import DetectRequest, Detection, FrameFeatures, MemoryView, TrackRequest
from samtrack.session.models import get_model

H, W = 48, 64  # video size (not square: coordinates must map per axis)


def _fake(tmp):
    spec = dataclasses.replace(get_model("sam2.1_hiera_tiny"), name="fake", family="fake")
    return backends.load_backend(spec, None, image_size=128, device="cpu"), None


def _sam2(tmp):
    from tests import model_utils as mu

    ck = mu.make_checkpoint(tmp / "sam2.1_tiny.pt", image_size=128)
    return backends.load_backend(get_model("sam2.1_hiera_tiny"), ck, image_size=128, device="cpu"), ck


def _sam3(tmp):
    from tests import sam3_models as s3

    ck = s3.make_checkpoint(tmp / "sam3_tiny.pt")
    return backends.load_backend(get_model(s3.MODEL), ck, image_size=s3.IMAGE_SIZE, device="cpu",
                                 **s3.LOAD_OPTIONS), ck


FACTORIES = {"fake": _fake, "sam2": _sam2}
if importlib.util.find_spec("tests.sam3_models") is not None:  # the SAM3 backend's test model
    FACTORIES["sam3"] = _sam3


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def loaded(request, tmp_path_factory):
    family = request.param
    backend, ck = FACTORIES[family](tmp_path_factory.mktemp(family))
    return family, backend, ck


def _frame(backend, seed=0):
    from samtrack.io.model_input import to_model_input

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return img, to_model_input(img, backend.input_spec)


def test_declares_what_the_session_reads(loaded):
    family, b, _ = loaded
    assert b.family == family and family in backends.FAMILIES
    assert b.input_spec.size == b.image_size > 0
    assert len(b.input_spec.mean) == 3 and len(b.input_spec.std) == 3 and min(b.input_spec.std) > 0
    assert 0 < b.low_res_size <= b.image_size
    assert b.no_object_logit < -100  # sigmoid is exactly 0 in float32: "no mask here"
    assert b.num_maskmem >= 1 and b.max_obj_ptrs >= 1
    assert isinstance(b.device, torch.device)
    for k in ("encode_image", "track", "prompt", "encode_memory"):
        assert k in b.calls


def test_map_points_scales_each_axis_to_model_pixels(loaded):
    _, b, _ = loaded
    pts = np.array([[0, 0], [W, H], [W / 2, H / 4]], np.float32)
    got = b.map_points(pts, W, H)
    assert got.dtype == torch.float32 and tuple(got.shape) == (3, 2)
    S = b.image_size
    np.testing.assert_allclose(got.numpy(), [[0, 0], [S, S], [S / 2, S / 4]], rtol=1e-6, atol=1e-4)


def _prompt(b, feats, frame=0):
    pts = b.map_points(np.array([[W / 2, H / 2]], np.float32), W, H)
    return b.prompt(feats, frame, None, points=pts, labels=torch.tensor([1], dtype=torch.int32), n_frames=4)


def test_prompt_and_track_shapes_dtypes_devices(loaded):
    _, b, _ = loaded
    _, x = _frame(b)
    feats = b.encode_image(x, 0)
    assert isinstance(feats, FrameFeatures) and feats.frame_idx == 0
    s = b.low_res_size
    out = _prompt(b, feats)
    assert tuple(out.mask_logits.shape) == (1, 1, s, s) and out.mask_logits.dtype == torch.float32
    assert out.obj_ptr.ndim == 2 and out.obj_ptr.shape[0] == 1
    assert tuple(out.object_score.shape) == (1, 1) and tuple(out.iou.shape) == (1,)
    assert out.mask_logits.device.type == b.device.type
    mem = b.encode_memory(feats, out.mask_logits[0], out.object_score[0], True)
    assert mem.ndim == 3

    from samtrack.memory.entry import MemoryEntry

    key = MemoryEntry(obj_ptr=out.obj_ptr[0], object_score=out.object_score[0], mask_logits=out.mask_logits[0],
                      iou=float(out.iou[0]), from_prompt=True, reverse=False, keyframe=True, maskmem=mem)
    feats1 = b.encode_image(_frame(b, 1)[1], 1)
    views = [MemoryView({0: key}, {}), MemoryView({0: key}, {})]  # a batch of two objects
    tr = b.track(feats1, TrackRequest(1, False, views), 4)
    assert tuple(tr.mask_logits.shape) == (2, 1, s, s) and tr.mask_logits.dtype == torch.float32
    assert tuple(tr.object_score.shape) == (2, 1) and tuple(tr.iou.shape) == (2,)
    assert tr.obj_ptr.shape == (2, out.obj_ptr.shape[1])
    assert tr.maskmem is not None and tuple(tr.maskmem.shape[1:]) == tuple(mem.shape)
    assert tr.maskmem.dtype == mem.dtype
    # two identical objects in one batch get identical results (no cross-talk inside a batch)
    torch.testing.assert_close(tr.mask_logits[0], tr.mask_logits[1])
    video = b.to_video_res(tr.mask_logits, H, W)
    assert tuple(video.shape) == (2, H, W) and video.dtype == torch.float32
    assert b.calls["track"][1] >= 2 and b.calls["encode_image"][1] >= 1


def test_stored_features_track_as_fresh_ones(loaded):
    _, b, _ = loaded
    _, x = _frame(b, 2)
    feats = b.encode_image(x, 0)
    rows = b.features_to_store(feats)
    assert rows and all(isinstance(v, torch.Tensor) for v in rows.values())
    back = b.features_from_store({k: v.cpu().clone() for k, v in rows.items()}, 0)
    a, c = _prompt(b, feats), _prompt(b, back)
    torch.testing.assert_close(a.mask_logits, c.mask_logits, rtol=0, atol=1e-5)


def test_frames_read_stays_inside_the_video(loaded):
    _, b, _ = loaded
    n = 40
    for f, rev in ((0, False), (5, False), (39, True), (20, True), (20, False)):
        got = b.frames_read(f, rev, [0], n)
        assert got == sorted(set(got)) and all(0 <= t < n for t in got) and f not in got
        assert all((t > f) if rev else (t < f) for t in got), (f, rev, got)
    assert b.frames_read(0, False, [0], n) == []  # nothing before the first frame


def test_recognises_its_own_checkpoint_and_refuses_another(loaded, tmp_path):
    family, b, ck = loaded
    if ck is None:  # the fake backend has no checkpoints
        assert backends.family_module(family).recognise({"x": torch.zeros(1)}) is None
        return
    from samtrack.session.checkpoints import load_state_dict

    sd = load_state_dict(ck)
    assert backends.recognise(sd) == b.spec.name
    assert backends.family_module(family).recognise({"unrelated.weight": torch.zeros(2)}) is None
    # a checkpoint with one tensor missing: a CheckpointError that names the model, not a crash
    broken = dict(sd)
    broken.pop(sorted(broken)[len(broken) // 2])
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="does not match|missing"):
        backends.load_backend(b.spec, tmp_path / "broken.pt", image_size=b.image_size, device="cpu",
                              **(_sam3_options() if family == "sam3" else {}))


def _sam3_options():
    from tests import sam3_models as s3

    return s3.LOAD_OPTIONS


def test_detect_returns_detections_or_a_prompt_error(loaded):
    family, b, _ = loaded
    img, x = _frame(b, 3)
    feats = b.encode_image(x, 0)
    if not hasattr(b, "detect"):
        pytest.fail(f"{family} backend has no detect(); every family answers object-creating prompts")
    # the fake backend finds what its "squares" option says; real families take their own options only
    req = DetectRequest(text="cell", threshold=0.0, options={"squares": [(4, 4, 20, 30)]} if family == "fake" else {})
    try:
        found = b.detect(img, feats, req)
    except PromptError as e:  # a family without text prompts says which family has them
        assert "sam3" in str(e).lower()
        return
    for d in found:
        assert isinstance(d, Detection) and d.mask.shape == (H, W) and d.mask.dtype == bool
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H and 0 <= d.score <= 1


def test_unknown_family_and_missing_package_are_typed_errors(monkeypatch):
    from samtrack.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="known"):
        backends.family_module("sam9")
    monkeypatch.setitem(backends.FAMILIES, "sam3", "samtrack.session.backends._no_such_module")
    with pytest.raises(CheckpointError, match="make setup"):
        backends.family_module("sam3")
