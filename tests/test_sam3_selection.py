"""SAM3's memory selection: the rule (against upstream's own ``frame_filter`` and ``cal_mem_score``), the
scores the MemoryBank keeps for it, and the one deliberate difference (objects are scored alone)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtrack.memory.bank import MemoryBank
from samtrack.memory.entry import MemoryEntry
from samtrack.session.backends import sam3_compat
from samtrack.session.backends.base import FrameHistory
from samtrack.session.backends.sam3_backend import Sam3Backend

sam3_compat.ensure_importable()
from sam3.model.sam3_tracker_base import Sam3TrackerBase  # noqa: E402

THR, PTRS = 0.01, 16


class _Upstream:
    """What Sam3TrackerBase.frame_filter and cal_mem_score read from the model."""

    max_obj_ptrs_in_encoder = PTRS
    mf_threshold = THR
    cal_mem_score = Sam3TrackerBase.cal_mem_score


def _backend() -> Sam3Backend:
    b = Sam3Backend.__new__(Sam3Backend)  # the selection needs no weights
    b.max_obj_ptrs, b.mf_threshold, b.memory_selection = PTRS, THR, True
    return b


def _history(rng, n):
    score = rng.choice([8.0, 2.0, 0.01, -3.0], size=n).astype(np.float32) + rng.normal(0, 0.1, n).astype(np.float32)
    iou = rng.uniform(0.0, 0.03, n).astype(np.float32)
    gone = rng.random(n) < 0.2  # keyframes, prompts, frames never tracked
    score[gone] = iou[gone] = np.nan
    return score, iou


def _upstream_filter(score, iou, f, rev, n):
    up = _Upstream()
    non_cond = {}
    for t in range(n):
        if not np.isnan(iou[t]):
            non_cond[t] = {"eff_iou_score": up.cal_mem_score(torch.tensor([[score[t]]]), torch.tensor([iou[t]]))}
    return Sam3TrackerBase.frame_filter(up, {"non_cond_frame_outputs": non_cond}, rev, f, n, 1)


def test_frames_read_is_upstreams_frame_filter():
    rng = np.random.default_rng(0)
    b = _backend()
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 60))
        score, iou = _history(rng, n)
        f, rev = int(rng.integers(0, n)), bool(rng.integers(0, 2))
        want = _upstream_filter(score, iou, f, rev, n)
        got = b.frames_read(f, rev, [], n, history=lambda: FrameHistory(score, iou))
        assert got == sorted(want), (n, f, rev)
        checked += len(want) > 1
    assert checked > 100


def test_selection_scans_past_a_long_absence_in_blocks():
    n = 5000
    score, iou = np.full(n, 8.0, np.float32), np.full(n, 0.5, np.float32)
    iou[100:4990] = 0.001  # below the threshold for a long stretch
    b = _backend()
    got = b.frames_read(4995, False, [], n, history=lambda: FrameHistory(score, iou))
    assert got == sorted(_upstream_filter(score, iou, 4995, False, n))
    assert got == list(range(90, 100)) + list(range(4990, 4995))  # 15 frames scoring above the threshold


def test_without_scores_every_earlier_frame_is_selectable():
    b = _backend()
    assert b.frames_read(0, False, [0], 40) == []
    assert b.frames_read(39, True, [0], 40) == []
    assert b.frames_read(5, False, [0], 40) == [1, 2, 3, 4]  # frame 0 is never scanned going forward
    assert b.frames_read(30, False, [0], 40) == list(range(15, 30))
    assert b.frames_read(20, True, [0], 40) == list(range(21, 36))


def test_objects_are_scored_alone_not_averaged_over_a_batch():
    """README "Deliberate differences": upstream's standalone tracker with several objects in one
    inference state scores a frame once for all of them, mean(2 sigmoid(score) - 1) x mean(IoU) (the
    product broadcasts (B, 1) by (B,)), so an absent object can drop a frame from every object's memory.
    samtrack scores each object alone, as upstream's video predictor, one state per clicked object."""
    up = _Upstream()
    scores = torch.tensor([[8.0], [-3.0]])  # object A present, object B absent on this frame
    ious = torch.tensor([0.015, 0.001])
    batch = float(up.cal_mem_score(scores, ious))
    alone = [float(up.cal_mem_score(scores[i:i + 1], ious[i:i + 1])) for i in range(2)]
    assert batch < THR < alone[0]  # upstream's batch drops the frame for A; alone, A keeps it
    assert batch == pytest.approx(float((scores > 0).float().mul(scores.sigmoid() * 2 - 1).mean() * ious.mean()))
    b = _backend()
    n, f = 10, 9
    hist_a = FrameHistory(np.full(n, 8.0, np.float32), np.full(n, 0.015, np.float32))
    assert b.frames_read(f, False, [], n, history=lambda: hist_a) == list(range(1, 9))


def _entry(score, iou=float("nan"), **kw):
    return MemoryEntry(obj_ptr=torch.zeros(4), object_score=torch.tensor([score]), mask_logits=torch.zeros(1, 4, 4),
                       iou=iou, from_prompt=kw.pop("from_prompt", False), reverse=False, **kw)


def test_bank_keeps_tracked_scores_for_selection(tmp_path):
    bank = MemoryBank(tmp_path, 10, host_budget_bytes=1)
    bank.put(1, 0, _entry(10.0, 1.0, from_prompt=True, keyframe=True))
    bank.put(1, 1, _entry(7.5), persist=False, hold=True, iou=torch.tensor(0.25))  # IoU still on the device
    s, i = bank.scores(1)
    assert np.isnan(s[0]) and np.isnan(i[0])  # prompts and keyframes are not selectable
    assert (s[1], i[1]) == (7.5, 0.25)
    bank.persist(1, 1, _entry(7.5, 0.25))
    bank.put(1, 2, _entry(-2.0), persist=False, hold=True, iou=torch.tensor(0.5))
    bank.persist(1, 2, _entry(-2.0, 0.5))
    bank.put(1, 3, _entry(3.0), persist=False, hold=True, iou=torch.tensor(0.75))
    bank.persist(1, 3, _entry(3.0, 0.75))
    bank.put(1, 3, _entry(3.0, 0.75, maskmem=torch.zeros(2)), persist=False)  # memory re-encoded: unchanged
    bank.put(1, 2, _entry(-2.0, 0.5, from_prompt=True, keyframe=True))  # frame 2 becomes a keyframe
    bank.discard(1, [3])
    s, i = bank.scores(1)
    np.testing.assert_array_equal(i[:4], np.array([np.nan, 0.25, np.nan, np.nan], np.float32))
    bank.put(1, 4, _entry(6.0), persist=False, hold=True, iou=torch.tensor(0.125))
    bank.persist(1, 4, _entry(6.0, 0.125))
    bank.close()
    # a reopened job reads them back from the disk tier
    again = MemoryBank(tmp_path, 10)
    s2, i2 = again.scores(1)
    np.testing.assert_array_equal(i2, bank.scores(1)[1])
    np.testing.assert_array_equal(s2, bank.scores(1)[0])
    assert (s2[4], i2[4]) == (6.0, 0.125)
    again.drop_object(1)
    assert np.isnan(again.scores(1)[1]).all()
