"""GPU checks (skipped without CUDA): fidelity under bf16 autocast with memory offloaded to the host."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import samtrack
from tests import media
from tests import model_utils as mu

pytestmark = pytest.mark.gpu


POINTS = [[40, 60], [100, 40], [120, 90]]


@pytest.mark.parametrize("n_obj", [1, 3])
def test_cuda_offload_matches_upstream_under_bf16(tmp_path, n_obj):
    """With 3 objects, one batch mixes memories still on the device with ones already offloaded."""
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=256)
    vid = media.write_video(tmp_path / "v.mp4", 40, w=160, h=120)
    s = samtrack.open_session(vid, checkpoint=ck, image_size=256, device="cuda", workdir=tmp_path / "w")
    s.bank.device_entries = 4  # nearly everything goes through the asynchronous device-to-host copies
    ours = {}
    for k in range(n_obj):
        r = s.add_points(0, k + 1, [POINTS[k]], [1])
        ours[(k + 1, 0)] = r.logits[list(r.obj_ids).index(k + 1)]
    for r in s.propagate("forward"):
        for k, oid in enumerate(r.obj_ids):
            ours[(oid, r.frame_idx)] = r.logits[k]
    assert s.bank.stats["offloads"] > 20
    from sam2.build_sam import build_sam2_video_predictor

    from samtrack.session.backends.sam2_backend import hydra_overrides
    from samtrack.session.models import get_model

    pred = build_sam2_video_predictor(get_model("sam2.1_hiera_tiny").config, str(ck), device="cuda",
                                      hydra_overrides_extra=hydra_overrides(256)[6:])
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        st = mu.upstream_state(pred, s.frames, tmp_path)
        st["images"] = st["images"].cuda()
        for k in range(n_obj):
            pred.add_new_points_or_box(st, 0, k + 1, points=np.array([POINTS[k]], np.float32),
                                       labels=np.array([1], np.int32))
        theirs = {}
        for f, ids, m in pred.propagate_in_video(st):
            for k, oid in enumerate(ids):
                theirs[(oid, f)] = m[k, 0].float().cpu().numpy()
    assert set(theirs) <= set(ours)
    worst = max(np.abs(ours[f] - theirs[f]).max() for f in theirs)
    agree = np.mean([((ours[f] > 0) == (theirs[f] > 0)).mean() for f in theirs])
    # bf16 keeps 8 bits of mantissa, and batch sizes differ (a prompt's memory is encoded alone
    # here, with the other objects upstream), so logits differ at bf16 rounding level (0.125
    # measured on an H100 with 3 objects). Random weights put many pixels near 0, where that
    # flips a mask pixel; anything beyond rounding (a wrong memory frame) moves logits by whole units.
    assert worst <= 0.25, (worst, agree)
    assert agree > 0.995, (worst, agree)
    s.close()


def test_cuda_tracking_from_stored_bf16_features_equals_fresh(tmp_path):
    """Features are stored in the dtype the encoder produced under autocast (bf16), copied to the
    host asynchronously: tracking from them gives the logits of fresh encoding, bit for bit."""
    from samtrack.session import SessionConfig

    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=256)
    vid = media.write_video(tmp_path / "v.mp4", 24, w=160, h=120)

    def run(wd, **cfg):
        s = samtrack.open_session(vid, checkpoint=ck, image_size=256, device="cuda", workdir=wd,
                                  config=SessionConfig(**cfg))
        if s.features is not None:
            s.precompute_features()
            s.backend.calls["encode_image"].clear()
        s.add_points(0, 1, [POINTS[0]], [1])
        out = {r.frame_idx: r.logits[0].copy() for r in s.propagate("forward")}
        encoded = s.backend.calls["encode_image"].total()
        s.close()
        return out, encoded

    fresh, _ = run(tmp_path / "a", feature_store=False)
    stored, encoded = run(tmp_path / "b")
    assert encoded == 0 and fresh.keys() == stored.keys()
    for f in fresh:
        np.testing.assert_array_equal(stored[f], fresh[f], err_msg=str(f))


def test_host_copies_keep_the_memory_layout():
    """Channels-last features copied to pinned host memory stay channels-last (the feature store records
    and restores that layout); an expanded tensor (overlapping) is copied dense; values equal."""
    from samtrack.session.inflight import to_host

    x = torch.randn(1, 64, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    given = {"a": x, "b": x[0], "c": x.expand(2, -1, -1, -1), "d": torch.randn(3, 5, device="cuda")}
    host, event = to_host(given)
    event.synchronize()
    assert host["a"].stride() == x.stride() and host["b"].stride() == x[0].stride() and host["a"].is_pinned()
    assert host["c"].is_contiguous()
    for k, v in given.items():
        assert torch.equal(host[k], v.cpu()), k


def test_cuda_graph_replay_equals_eager_under_bf16(tmp_path):
    """Objects joining on frames 0, 5 and 12 (different read sets, padded into one batch): the
    tracking step replayed from CUDA graphs gives the eager step's logits within bf16 rounding,
    the graphs stay on (every new graph's first replay passed its self-check) and most frames
    are replays."""
    from samtrack.session import SessionConfig

    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=256)
    n = 48
    vid = media.write_video(tmp_path / "v.mp4", n, w=160, h=120)
    starts = {1: 0, 2: 5, 3: 12}

    def run(wd, graphs):
        s = samtrack.open_session(vid, checkpoint=ck, image_size=256, device="cuda", workdir=wd,
                                  config=SessionConfig(cuda_graphs=graphs))
        assert s.backend.cuda_graphs is graphs
        out = {}
        for oid, f in starts.items():
            out[(oid, f)] = s.add_points(f, oid, [POINTS[oid - 1]], [1]).logits[0]
        for r in s.propagate("forward"):
            for k, oid in enumerate(r.obj_ids):
                out[(oid, r.frame_idx)] = r.logits[k].copy()
        stats = dict(s.backend._graphs.stats) if graphs else None
        on = s.backend.cuda_graphs
        s.close()
        return out, stats, on

    eager, _, _ = run(tmp_path / "eager", False)
    graphed, stats, on = run(tmp_path / "graphs", True)
    assert on and stats["captured"] >= 1 and stats["replayed"] >= n - 20, stats
    assert graphed.keys() == eager.keys()
    worst = max(np.abs(graphed[k] - eager[k]).max() for k in eager)
    agree = np.mean([((graphed[k] > 0) == (eager[k] > 0)).mean() for k in eager])
    # the same kernels on differently padded inputs (pointer slots to a multiple of 8, always masked) under
    # bf16: rounding-level differences (see test_cuda_offload_matches_upstream_under_bf16)
    assert worst <= 0.25, (worst, agree)
    assert agree > 0.995, (worst, agree)
