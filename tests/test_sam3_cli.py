"""`samtrack track --text` end to end on a real clip (EndoVis 2017, ../shared/data), with a tiny random-init
SAM3 whose detector heads are biased so that random weights detect something (tests/test_sam3_detect.py):
objects are created from the text, tracked both ways, exported, and a second run resumes without
detecting or tracking again. The masks' quality is meaningless (untrained); what is checked is the path."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from tests import sam3_models as s3
from tests.conftest import shared


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("sam3_cli")
    # the tracker's object-score head biased (objects stay), and the detector's heads, so random weights detect
    return s3.make_detecting_checkpoint(d / "sam3_tiny_det.pt")


def _track(*args, cwd):
    return subprocess.run([sys.executable, "-m", "samtrack.cli", "track", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=1500)


def test_track_with_a_text_prompt_on_a_real_clip(ckpt, tmp_path):
    clip = shared("surgical/endovis17_robotic_clip_1080p/short_source.mp4")
    out = tmp_path / "job"
    args = [clip, "--model", "sam3", "--checkpoint", ckpt, "--image-size", s3.IMAGE_SIZE, "--device", "cpu",
            "--text", "instrument", "--text-frame", 10, "--threshold", 0.3, "--direction", "both",
            "--export", "tiff", "--export", "coco", "--out", out]
    r = _track(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "instrument 1" in r.stderr  # the objects found are listed by name (messages go to stderr)
    labels = tifffile.imread(out / "labels.tif")
    n, h, w = labels.shape
    assert (n, h, w) == (20, 1080, 1920)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert ids and ids[0] == 1  # found objects are numbered from 1
    # tracked both ways from frame 10: frames before and after it carry the objects too
    assert labels[0].any() and labels[19].any() and labels[10].any()
    coco = json.loads((out / "coco.json").read_text())
    assert {c["name"] for c in coco["categories"]} >= {"instrument 1"}
    # the same command again: the find is unchanged, nothing is detected or tracked again
    r2 = _track(*args, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "nothing left to compute" in r2.stderr
    np.testing.assert_array_equal(tifffile.imread(out / "labels.tif"), labels)
