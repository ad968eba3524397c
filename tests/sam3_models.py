"""A tiny random-init SAM3 (the "tiny" width preset) at a small image size, saved as an official-layout
checkpoint (``{"model": {...}}`` with ``detector.*`` and ``tracker.*`` keys), and upstream's own
``Sam3TrackerPredictor`` on the same weights, for fidelity tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from samtrack.session.backends import sam3_build, sam3_compat
from tests.model_utils import cached_checkpoint

MODEL = "sam3"
IMAGE_SIZE = 112  # 8 x 8 features (the ViT's stride is 14): small, and every shape still works
LOAD_OPTIONS = {"width": "tiny"}
# the IoU head: predicted IoUs around 0.01, so the memory-selection score (2 sigmoid(score) - 1) * IoU
# straddles sam3's threshold (0.01) from frame to frame and some frames are skipped
IOU_BIAS, IOU_GAIN = -20.85, 200.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while a SAM3 test module runs: the tiny model's operations are small, and on
    the 2-core CI machine OpenMP hand-offs between two threads cost more than they save (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_checkpoint(path: Path, *, image_size: int = IMAGE_SIZE, seed: int = 0, select: bool = True) -> Path:
    """Random weights with the object-score head biased so objects are present (masks are not all empty),
    wider mask logits (a stronger test signal) and, with ``select``, the IoU head set as above.
    Built once per test process for each (image_size, seed, select); ``path`` gets a copy."""
    return cached_checkpoint(("sam3", image_size, seed, select), path,
                             lambda f: _build_checkpoint(f, image_size=image_size, seed=seed, select=select))


def _build_checkpoint(path: Path, *, image_size: int, seed: int, select: bool) -> None:
    torch.manual_seed(seed)
    m = sam3_build.build_video_model(image_size, "tiny")
    dec = m.tracker.sam_mask_decoder
    with torch.no_grad():
        dec.pred_obj_score_head.layers[-1].bias.fill_(8.0)
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
        if select:
            dec.iou_prediction_head.layers[-1].bias.fill_(IOU_BIAS)
            dec.iou_prediction_head.layers[-1].weight.mul_(IOU_GAIN)
    torch.save({"model": m.state_dict()}, path)


def make_detecting_checkpoint(path: Path) -> Path:
    """:func:`make_checkpoint`'s weights (seed 0) with the detector's heads biased as in
    ``tests/test_sam3_detect._bias_detector``, so that random weights detect something (the text and
    find-all paths end to end). Built once per test process; ``path`` gets a copy."""

    def build(f: Path) -> None:
        from tests.test_sam3_detect import _bias_detector

        tracker_ck = make_checkpoint(f.with_name(f.stem + "-tracker.pt"))
        m = sam3_build.build_video_model(IMAGE_SIZE, LOAD_OPTIONS["width"])
        m.load_state_dict(torch.load(tracker_ck, map_location="cpu", weights_only=True)["model"])
        tracker_ck.unlink()
        _bias_detector(m.detector)
        torch.save({"model": m.state_dict()}, f)

    return cached_checkpoint(("sam3-detecting", IMAGE_SIZE), path, build)


def upstream_tracker(ckpt: Path, *, image_size: int = IMAGE_SIZE):
    """Upstream's tracker predictor loaded the way ``build_sam3_video_model`` loads a checkpoint (strict),
    with the detector's backbone attached as ``build_tracker(with_backbone=True)`` has one, so that
    ``init_state`` / ``add_new_points_or_box`` / ``add_new_mask`` / ``propagate_in_video`` run unchanged."""
    model = sam3_build.build_video_model(image_size, "tiny")
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    tracker = model.tracker
    tracker.backbone = model.detector.backbone
    return tracker.eval()


class Upstream:
    """Upstream's SAM3 tracker on one video, one inference state per object (as upstream's video
    predictor keeps objects added by clicks), fed samtrack's model-ready frames. Image features are
    computed once by upstream's own ``forward_image`` and given to every state as ``cached_features``.
    ``reads[(obj_id, frame, reverse)]``: the frames ``frame_filter`` selected for that step."""

    def __init__(self, tracker, frames_store, spec):
        self.tracker = tracker
        self.n = len(frames_store)
        self.h, self.w = frames_store.read(0).shape[:2]
        self.images = torch.stack([frames_store.model_input(i, spec) for i in range(self.n)])
        self.cached: dict = {}
        self.states: dict[int, dict] = {}
        self.reads: dict[tuple, list[int]] = {}
        self._obj: int | None = None
        original = type(tracker).frame_filter

        def frame_filter(output_dict, track_in_reverse, frame_idx, num_frames, r):
            got = original(tracker, output_dict, track_in_reverse, frame_idx, num_frames, r)
            self.reads[(self._obj, frame_idx, bool(track_in_reverse))] = list(got)
            return got

        tracker.frame_filter = frame_filter

    def _run(self, fn, *args, **kw):
        with sam3_compat.upstream_on("cpu"), torch.inference_mode():
            return fn(*args, **kw)

    def _state(self, obj_id: int) -> dict:
        if obj_id not in self.states:
            if not self.cached:
                for i in range(self.n):
                    img = self.images[i][None]
                    self.cached[i] = (img, self._run(self.tracker.forward_image, img))
            self.states[obj_id] = self._run(self.tracker.init_state, video_height=self.h, video_width=self.w,
                                             num_frames=self.n, cached_features=self.cached,
                                             offload_video_to_cpu=True, offload_state_to_cpu=True)
        self._obj = obj_id
        return self.states[obj_id]

    def _rel(self, xy) -> torch.Tensor:
        xy = torch.tensor(np.asarray(xy, np.float32).reshape(-1, 2))
        return xy / torch.tensor([self.w, self.h], dtype=torch.float32)

    def points(self, frame: int, obj_id: int, points, labels) -> np.ndarray:
        st = self._state(obj_id)
        _, _, _, m = self._run(self.tracker.add_new_points_or_box, st, frame, obj_id, points=self._rel(points),
                               labels=torch.tensor(labels, dtype=torch.int32))
        return m[0, 0].numpy()

    def box(self, frame: int, obj_id: int, box) -> np.ndarray:
        st = self._state(obj_id)
        _, _, _, m = self._run(self.tracker.add_new_points_or_box, st, frame, obj_id,
                               box=self._rel(np.asarray(box, np.float32).reshape(2, 2)).reshape(-1))
        return m[0, 0].numpy()

    def mask(self, frame: int, obj_id: int, mask: np.ndarray) -> np.ndarray:
        st = self._state(obj_id)
        _, _, _, m = self._run(self.tracker.add_new_mask, st, frame, obj_id, torch.from_numpy(mask))
        return m[0, 0].numpy()

    def propagate(self, obj_id: int, start: int | None = None, reverse: bool = False) -> dict:
        """{(obj_id, frame): (H, W) logits} of one ``propagate_in_video`` call (with its preflight)."""
        st = self._state(obj_id)

        def run():
            out = {}
            for f, _, _, video, _ in self.tracker.propagate_in_video(
                    st, start_frame_idx=start, max_frame_num_to_track=None, reverse=reverse,
                    propagate_preflight=True, tqdm_disable=True):
                out[(obj_id, f)] = video[0, 0].numpy().copy()
            return out

        return self._run(run)


__all__ = ["IMAGE_SIZE", "LOAD_OPTIONS", "MODEL", "Upstream", "make_checkpoint", "make_detecting_checkpoint",
           "upstream_tracker"]
