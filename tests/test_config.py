"""YAML presets in configs/: every shipped preset loads, unknown keys are named, the CLI applies them."""
from __future__ import annotations

from pathlib import Path

import pytest

from samtrack.config import load_config
from samtrack.errors import InvalidOptionError
from samtrack.session import SessionConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_presets_exist_and_default_matches_the_code_defaults():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "microscopy.yaml"}
    cfg, video = load_config(CONFIGS[[p.name for p in CONFIGS].index("default.yaml")])
    assert cfg == SessionConfig() and video == {}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads(path):
    cfg, video = load_config(path)
    assert isinstance(cfg, SessionConfig)


def test_microscopy_preset_reaches_the_frame_store(tmp_path):
    import numpy as np

    import samtrack
    from tests import media

    _, video = load_config(Path(__file__).resolve().parents[1] / "configs" / "microscopy.yaml")
    stack = media.uint16_stack(4)
    with samtrack.open_video(stack, workdir=tmp_path, **video) as fs:
        lo, hi = fs.mapping.windows[0]
        assert hi == pytest.approx(float(np.percentile(stack[:, ::1, ::1], 99.8)), rel=0.05)


@pytest.mark.parametrize("key,value", [("feature_disk_budget_bytes", -1), ("feature_disk_budget_bytes", "20GB"),
                                       ("feature_disk_budget_bytes", 1.5), ("host_budget_bytes", None),
                                       ("host_budget_bytes", -5), ("feature_cache_frames", True)])
def test_nonsense_budgets_are_refused_when_the_config_is_built(key, value):
    """A YAML preset's value reaches SessionConfig as written: a budget that is not a whole number of bytes (or
    frames) is refused there, naming the key, not deep inside a session's open or its first eviction."""
    with pytest.raises(InvalidOptionError, match=key):
        SessionConfig(**{key: value})
    assert SessionConfig(feature_disk_budget_bytes=None).feature_disk_budget_bytes is None  # no cap: allowed
    assert SessionConfig(feature_disk_budget_bytes=0, feature_cache_frames=0).feature_cache_frames == 0


def test_unknown_keys_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("session:\n  overlap_rul: nearer\n")
    with pytest.raises(InvalidOptionError, match="overlap_rul"):
        load_config(p)
    p.write_text("sessions: {}\n")
    with pytest.raises(InvalidOptionError, match="sessions"):
        load_config(p)


def test_track_cli_applies_a_preset(tmp_path):
    import json
    import subprocess
    import sys

    from tests import media

    vid = media.write_video(tmp_path / "v.mp4", 6, w=64, h=48)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[30, 20]]}]}]}))
    preset = Path(__file__).resolve().parents[1] / "configs" / "microscopy.yaml"
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "track", str(vid), "--prompts", str(prompts), "--out",
                        str(tmp_path / "job"), "--checkpoint", "untrained", "--image-size", "64", "--device", "cpu",
                        "--config", str(preset)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import zarr

    attrs = dict(zarr.open_group(tmp_path / "job" / "frames.zarr", mode="r").attrs)
    assert attrs["signature"]["intensity"]["high"] == 99.8  # the preset's window reached the frame cache
