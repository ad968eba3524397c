"""Each workaround in samtrack/session/backends/sam3_compat.py is needed: without it, upstream fails here.

Checks that need a machine without CUDA (the CI machine) skip on a GPU machine, and the one about
CUDA autocast runs only there.
"""
from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from samtrack.session.backends import sam3_compat

from tests.sam3_models import one_thread  # noqa: F401  (autouse fixture)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="shows a failure of CUDA-only code: needs a CPU-only torch")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("triton") is not None, reason="triton is installed here")
def test_sam3_tracker_needs_the_edt_placeholder_without_triton():
    r = _python(
        "import sys\n"
        "from samtrack.session.backends.torchvision_compat import ensure_torchvision\n"
        "ensure_torchvision()\n"
        "try:\n    import sam3.model.sam3_tracker_base\nexcept ModuleNotFoundError as e:\n    print('without:', e.name)\n"
        "for m in [m for m in sys.modules if m == 'sam3' or m.startswith('sam3.')]:\n    del sys.modules[m]\n"
        "from samtrack.session.backends import sam3_compat\n"
        "sam3_compat.ensure_importable()\n"
        "import sam3.model.sam3_tracker_base, sam3.model_builder\n"
        "from sam3.model.edt import edt_triton\n"
        "try:\n    edt_triton(None)\nexcept RuntimeError as e:\n    print('with:', 'training' in str(e))\n"
        "import importlib.util as u\nprint('triton:', u.find_spec('triton'))\n")
    assert r.returncode == 0, r.stderr[-2000:]
    # upstream fails on `import triton`; with the placeholder the tracker imports, and triton is not faked
    assert r.stdout.splitlines() == ["without: triton", "with: True", "triton: None"], r.stdout + r.stderr[-2000:]


def test_connected_components_of_an_empty_batch(monkeypatch):
    sam3_compat.ensure_importable()
    import sam3.perflib.connected_components as cc
    from sam3.model.sam3_tracker_utils import fill_holes_in_mask_scores

    empty = torch.zeros(0, 1, 8, 8)
    assert fill_holes_in_mask_scores(empty, 4).shape == (0, 1, 8, 8)
    labels, counts = cc.connected_components(torch.zeros(0, 1, 6, 6, dtype=torch.uint8))
    assert labels.shape == counts.shape == (0, 1, 6, 6)
    some = torch.zeros(2, 1, 8, 8)
    some[0, 0, 2:4, 2:4] = 1
    np.testing.assert_array_equal(cc.connected_components(some)[1].numpy(),
                                  cc.connected_components.__wrapped__(some)[1].numpy())
    monkeypatch.setattr(cc, "connected_components", cc.connected_components.__wrapped__)
    with pytest.raises(RuntimeError, match="non-empty"):
        fill_holes_in_mask_scores(empty, 4)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from samtrack.session import backends
    from samtrack.session.models import get_model
    from tests import sam3_models as s3

    ck = s3.make_checkpoint(tmp_path_factory.mktemp("sam3_compat") / "tiny.pt")
    return backends.load_backend(get_model(s3.MODEL), ck, image_size=s3.IMAGE_SIZE, device="cpu")


def _one_step(b):
    """A prompt on frame 0, its memory, and a tracking step on frame 1 that reads it (memory + pointer)."""
    from samtrack.memory.entry import MemoryEntry
    from samtrack.session.backends.base import MemoryView, TrackRequest

    rng = np.random.default_rng(0)
    x = [torch.from_numpy(rng.standard_normal((3, b.image_size, b.image_size)).astype(np.float32)) for _ in range(2)]
    f0, f1 = b.encode_image(x[0], 0), b.encode_image(x[1], 1)
    out = b.prompt(f0, 0, None, points=torch.tensor([[50.0, 60.0]]), labels=torch.tensor([1]), n_frames=4)
    mem = b.encode_memory(f0, out.mask_logits[0], out.object_score[0], True)
    key = MemoryEntry(obj_ptr=out.obj_ptr[0], object_score=out.object_score[0], mask_logits=out.mask_logits[0],
                      iou=1.0, from_prompt=True, reverse=False, keyframe=True, maskmem=mem)
    return b.track(f1, TrackRequest(1, False, [MemoryView({0: key}, {})]), 4)


@NO_CUDA
def test_stored_memory_reaches_upstream_without_cuda_calls(backend, monkeypatch):
    assert _one_step(backend).mask_logits.shape[0] == 1
    monkeypatch.setattr(sam3_compat, "OnDevice", lambda t: t)  # upstream then calls .cuda() on a plain tensor
    with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
        _one_step(backend)


@pytest.mark.skipif(sam3_compat.CAN_PIN, reason="this machine can pin host memory")
def test_pointer_positions_without_pinned_memory(backend, monkeypatch):
    assert _one_step(backend).obj_ptr.shape[0] == 1
    monkeypatch.setattr(sam3_compat, "no_pinning", lambda active=None: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="accelerator|pin"):
        _one_step(backend)


def test_no_pinning_restores_the_method():
    before = torch.Tensor.pin_memory
    with sam3_compat.no_pinning(active=True):
        with sam3_compat.no_pinning(active=True):
            t = torch.zeros(2)
            assert t.pin_memory() is t
        assert torch.Tensor.pin_memory is not before
    assert torch.Tensor.pin_memory is before


@NO_CUDA
def test_build_time_cuda_caches_are_made_on_the_model_device(backend):
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine

    with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
        PositionEmbeddingSine(num_pos_feats=256, precompute_resolution=backend.image_size)  # upstream's build
    pe = backend.detector.backbone.vision_backbone.position_encoding
    S = backend.image_size
    assert {(S // k, S // k) for k in (4, 8, 16, 32)} <= set(pe.cache)  # what upstream precomputes (for S)
    fresh = PositionEmbeddingSine(num_pos_feats=256)
    for (h, w), v in pe.cache.items():
        assert v.device.type == "cpu"
        torch.testing.assert_close(v, fresh(torch.zeros(1, 1, h, w))[0], rtol=0, atol=0)
    dec = next(m for m in backend.detector.modules() if isinstance(m, TransformerDecoder))
    f = S // 14
    assert dec.compilable_stored_size == (f, f)
    torch.testing.assert_close(dec.compilable_cord_cache[0], torch.arange(f, dtype=torch.float32) / f)


def test_place_moves_rope_tables_kept_outside_buffers(backend):
    from sam3.sam.transformer import RoPEAttention

    rope = [m for m in backend.tracker.modules() if isinstance(m, RoPEAttention)]
    assert rope and all(m.freqs_cis.device == backend.device for m in rope)
    moved = []

    class Elsewhere:  # a table left on another device (a CUDA build of a model that runs on the CPU)
        def __init__(self, t):
            self.t = t

        def to(self, device):
            moved.append(torch.device(device))
            return self.t

    for m in rope:
        m.freqs_cis = Elsewhere(m.freqs_cis)
    sam3_compat.place(backend.tracker, backend.device, backend.image_size)
    assert moved == [backend.device] * len(rope)
    assert all(isinstance(m.freqs_cis, torch.Tensor) for m in rope)


def test_the_build_leaves_no_autocast_behind(backend):
    t = backend.tracker
    assert t._samtrack_autocast_released

    class Ctx:
        exits = 0

        def __exit__(self, *a):
            Ctx.exits += 1

    class Fake:
        bf16_context = Ctx()

    fake = Fake()
    sam3_compat.release_autocast(fake)
    sam3_compat.release_autocast(fake)  # once only
    assert Ctx.exits == 1


@pytest.mark.gpu
def test_building_sam3_does_not_switch_cuda_autocast_on(monkeypatch):
    from samtrack.session.backends import sam3_build

    assert not torch.is_autocast_enabled("cuda")
    sam3_build.build_video_model(112, "tiny")
    assert not torch.is_autocast_enabled("cuda")
    monkeypatch.setattr(sam3_compat, "release_autocast", lambda tracker: None)
    try:
        sam3_build.build_video_model(112, "tiny")
        assert torch.is_autocast_enabled("cuda")  # what upstream's constructor leaves behind
    finally:
        torch.set_autocast_enabled("cuda", False)


def test_one_encode_serves_tracker_and_detector_in_float32(backend):
    """Upstream's video path buffers the tracker's features as bf16 (sam3_image.py, for multi-GPU
    gathers), which fp32 weights on the CPU refuse; the backend keeps them in the encoder's dtype and
    they equal what upstream's own tracker.forward_image and detector backbone compute."""
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 112, 112)).astype(np.float32))
    feats = backend.encode_image(x, 0).data
    dec = backend.tracker.sam_mask_decoder
    with torch.inference_mode():
        full = backend.detector.backbone.forward_image(x[None])
        sam2 = full["sam2_backbone_out"]
        with pytest.raises(RuntimeError, match="BFloat16|bfloat16|same"):
            dec.conv_s0(sam2["backbone_fpn"][0].to(torch.bfloat16))  # what the video path's cast leads to
        ref = [dec.conv_s0(sam2["backbone_fpn"][0]), dec.conv_s1(sam2["backbone_fpn"][1]), sam2["backbone_fpn"][2]]
    for a, r in zip(feats["tracker"]["backbone_fpn"], ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    for a, r in zip(feats["detector"]["backbone_fpn"], full["backbone_fpn"]):
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    assert [t.shape[1] for t in feats["tracker"]["backbone_fpn"]] == [32, 64, 256]


def test_sam3_logs_and_cpu_autocast_warnings_do_not_reach_the_terminal():
    """sam3 gives its loggers their own stderr handlers (a library printing under samtrack's progress bars)
    and warns about CUDA autocast on every CPU import: after loading a backend, sam3's records propagate
    to the application's logging and those warnings are gone."""
    import subprocess
    import sys

    code = (
        "import logging, warnings\n"
        "warnings.simplefilter('always')\n"
        "from samtrack.session.backends import sam3_build\n"
        "m = sam3_build.build_video_model(56, 'tiny')\n"
        "bad = [n for n, lg in logging.Logger.manager.loggerDict.items() if n.startswith('sam3') and\n"
        "       isinstance(lg, logging.Logger) and (lg.handlers or not lg.propagate)]\n"
        "print('BAD', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BAD []" in r.stdout, r.stdout
    assert "Disabling autocast" not in r.stderr and "max_num_objects" not in r.stderr, r.stderr[-2000:]
