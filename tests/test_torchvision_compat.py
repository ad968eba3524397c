"""torchvision next to a torch its compiled ops were not built for: ensure_torchvision() makes
``import torchvision`` and ``ops.nms`` / ``ops.batched_nms`` work, and samtrack's NMS kernel
keeps torchvision's contract (checked against a brute-force NumPy NMS written here)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from samtrack.session.backends.torchvision_compat import ensure_torchvision, greedy_nms

FALLBACK_LOG = "compiled ops did not load"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Brute force: the full pairwise IoU matrix (float32, IoU = inter / (a_i + a_j - inter)), then visit boxes by
    descending score (ties: lower index first) and drop every later box whose IoU with a kept one is > thr."""
    b = boxes.astype(np.float32)
    x0, y0, x1, y1 = b.T
    area = (x1 - x0) * (y1 - y0)
    w = np.maximum(np.float32(0), np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]))
    h = np.maximum(np.float32(0), np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area[:, None] + area[None] - inter)  # (n, n) float32
    assert iou.dtype == np.float32
    n = len(b)
    order = sorted(range(n), key=lambda k: (-scores[k], k))
    keep, dropped = [], set()
    for pos, i in enumerate(order):
        if i in dropped:
            continue
        keep.append(i)
        dropped.update(j for j in order[pos + 1:] if float(iou[i, j]) > thr)
    return keep


def reference_batched(boxes, scores, cats, thr) -> list[int]:
    keep = [i for c in np.unique(cats) for i in np.flatnonzero(cats == c)[reference_nms(boxes[cats == c], scores[cats == c], thr)]]
    return sorted(keep, key=lambda k: (-scores[k], k))


def random_boxes(rng, n: int, *, integer: bool):
    xy = rng.uniform(0, 40, (n, 2))
    wh = rng.uniform(0, 16, (n, 2))
    wh[rng.random(n) < 0.05] = 0.0  # a few empty boxes (IoU 0/0 = NaN: never suppresses)
    b = np.concatenate([xy, xy + wh], 1)
    if integer:
        b = np.round(b)
    dup = rng.choice(n, size=n // 6, replace=False)  # exact duplicates: IoU exactly 1
    b[dup[: len(dup) // 2]] = b[dup[len(dup) // 2: 2 * (len(dup) // 2)]]
    scores = rng.integers(0, 6, n) / 5.0  # many ties
    return b.astype(np.float32), scores.astype(np.float32)


def test_import_fails_here_without_it_and_works_with_it():
    plain = run_python("""
        try:
            import torchvision
            print("imported", torchvision.extension._has_ops())
        except RuntimeError as e:
            print("failed", e)
    """)
    native = plain.stdout.startswith("imported True")
    if not native:  # this machine: a CUDA-built wheel next to the CPU torch
        assert "torchvision::nms" in plain.stdout and "does not exist" in plain.stdout, plain.stdout + plain.stderr
    fixed = run_python("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
        try:
            import torchvision  # a caller's earlier, failed attempt leaves half-imported modules behind
        except RuntimeError:
            pass
        import torch
        from samtrack.session.backends.torchvision_compat import ensure_torchvision
        tv = ensure_torchvision()
        assert ensure_torchvision() is tv
        from torchvision.ops.boxes import batched_nms
        import sam2.automatic_mask_generator  # the reason it exists
        b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60.0]])
        s = torch.tensor([0.9, 0.8, 0.95, 0.1])
        print(batched_nms(b, s, torch.tensor([0, 0, 1, 0]), 0.5).tolist(), tv.ops.nms(b, s, 0.5).tolist(),
              tv.extension._has_ops(), tv.ops.nms.__module__)
    """)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    out = fixed.stdout.strip()
    # box 1 overlaps box 0 (IoU 81/119 > 0.5) in category 0; box 2 is alone in category 1
    assert out.startswith("[2, 0, 3] [2, 3] "), out
    has_ops, nms_module = out.split()[-2:]
    assert has_ops == str(native)
    if native:  # matching wheels: torchvision is left alone
        assert nms_module == "torchvision.ops.boxes" and FALLBACK_LOG not in fixed.stderr
    else:
        assert nms_module == "samtrack.session.backends.torchvision_compat"
        assert fixed.stderr.count(FALLBACK_LOG) == 1, fixed.stderr  # logged once for two calls


def test_explicit_cases():
    b = torch.tensor([[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6], [5, 5, 6, 6], [5, 5, 6, 6.0]])
    s = torch.tensor([0.9, 0.8, 0.5, 0.5, 0.5])
    assert greedy_nms(b, s, 0.5).tolist() == [0, 1, 2]  # IoU exactly 0.5 is not > 0.5; ties: lowest index
    assert greedy_nms(b, s, 0.49).tolist() == [0, 2]
    assert greedy_nms(b, s, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert greedy_nms(b[:0], s[:0], 0.5).dtype == torch.int64 and len(greedy_nms(b[:0], s[:0], 0.5)) == 0
    # IoU 1/10 is float32 0.1000000015 > 0.1: the threshold is compared in float64, as torchvision's kernel does
    b, s = torch.tensor([[0, 0, 10, 1], [0, 0, 1, 1.0]]), torch.tensor([0.9, 0.8])
    assert greedy_nms(b, s, 0.1).tolist() == [0]
    assert ensure_torchvision().ops.nms(b, s, 0.1).tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
def test_nms_equals_brute_force(seed):
    tv = ensure_torchvision()
    rng = np.random.default_rng(seed)
    for n, integer in [(1, False), (9, False), (80, False), (80, True)]:
        b, s = random_boxes(rng, n, integer=integer)
        for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
            expected = reference_nms(b, s, thr)
            assert greedy_nms(torch.from_numpy(b), torch.from_numpy(s), thr).tolist() == expected, (n, thr)
            assert tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).tolist() == expected, (n, thr)


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_per_category_equals_brute_force(seed):
    tv = ensure_torchvision()
    rng = np.random.default_rng(100 + seed)
    # integer coordinates: torchvision's per-category offsets then shift boxes exactly
    b, s = random_boxes(rng, 150, integer=True)
    cats = rng.integers(0, 3, len(b))
    for thr in (0.0, 0.5, 0.7):
        got = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(cats), thr)
        assert got.tolist() == reference_batched(b, s, cats, thr), thr


def test_batched_nms_many_boxes_per_category():
    """Over 1,000 boxes torchvision runs nms once per category (its order among equal scores is
    then unspecified): the kept set and descending scores are checked."""
    tv = ensure_torchvision()
    rng = np.random.default_rng(7)
    b, s = random_boxes(rng, 1100, integer=False)
    b *= 4  # spread out: fewer suppressions, a longer keep list
    cats = rng.integers(0, 4, len(b))
    got = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(cats), 0.5).tolist()
    assert sorted(got) == sorted(reference_batched(b, s, cats, 0.5))
    assert all(s[i] >= s[j] for i, j in zip(got, got[1:]))
