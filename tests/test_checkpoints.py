"""Checkpoint lookup, fine-tuned weights, OOM mid-run (downloads: tests/test_model_manager.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import samtrack
from samtrack.errors import CheckpointError, OutOfMemoryError
from samtrack.io.result_store import Status
from samtrack.session.backends import recognise as guess_model
from samtrack.session.checkpoints import find_checkpoint, load_state_dict
from samtrack.session.models import MODELS, get_model
from tests import media
from tests import model_utils as mu


def test_registry_has_official_names():
    assert len(MODELS) == 9  # SAM2 and SAM2.1 in four sizes, SAM3
    tiny = get_model("sam2.1_hiera_t")
    assert tiny.checkpoint == "sam2.1_hiera_tiny.pt" and tiny.url.endswith("/092824/sam2.1_hiera_tiny.pt")
    assert tiny.hf_id == "facebook/sam2.1-hiera-tiny"


# downloads (hub protocol, resume, verification, gated refusals, concurrency): tests/test_model_manager.py


def test_checkpoint_found_in_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTRACK_CHECKPOINTS", str(tmp_path))
    spec = get_model("sam2.1_hiera_tiny")
    assert find_checkpoint(spec) is None
    (tmp_path / spec.checkpoint).write_bytes(b"x")
    assert find_checkpoint(spec) == tmp_path / spec.checkpoint


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="re-download"):
        load_state_dict(p)


def test_fine_tuned_checkpoint_loads_and_changes_results(tmp_path):
    base = mu.make_checkpoint(tmp_path / "base.pt", image_size=128)
    sd = torch.load(base, weights_only=True)["model"]
    assert guess_model(sd) == "sam2.1_hiera_tiny"
    g = torch.Generator().manual_seed(1)
    tuned = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and "sam_mask_decoder" in k else v)
             for k, v in sd.items()}
    torch.save({"model": tuned}, tmp_path / "tuned.pt")
    vid = media.write_video(tmp_path / "v.mp4", 4, w=64, h=48)
    out = []
    for name in ("base", "tuned"):
        with samtrack.open_session(vid, checkpoint=tmp_path / f"{name}.pt", image_size=128, device="cpu",
                                   workdir=tmp_path / f"w_{name}") as s:
            out.append(s.add_points(0, 1, [[30, 20]], [1]).logits[0])
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_out_of_memory_mid_propagation_keeps_frames_and_session(tmp_path):
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=128)
    vid = media.write_video(tmp_path / "v.mp4", 12, w=64, h=48)
    with samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w") as s:
        s.add_points(0, 1, [[30, 20]], [1])
        real = s.backend.track
        calls = {"n": 0}

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 6:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(*a, **k)

        s.backend.track = flaky
        with pytest.raises(OutOfMemoryError, match="image_size"):
            list(s.propagate("forward"))
        st = s.status(1)
        assert (st[1:6] == Status.PROPAGATED).all() and (st[6:] == Status.NOT_RUN).all()
        list(s.propagate("forward"))  # the session is still usable and resumes
        assert (s.status(1)[1:] == Status.PROPAGATED).all()
