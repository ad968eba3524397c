"""The README's Python code blocks run as written on a machine without a GPU, with the files
they name present (generated here) and a checkpoint in the folder samtrack searches."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from tests import media
from tests import model_utils as mu

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = python_blocks()
    assert blocks, "the README has no python example"
    ck_dir = tmp_path / "checkpoints"
    ck_dir.mkdir()
    mu.make_checkpoint(ck_dir / "sam2.1_hiera_tiny.pt", image_size=256)
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "cells.tif", rng.integers(100, 4000, (20, 64, 80), dtype=np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    media.write_video(tmp_path / "surgery.mp4", 30, w=480, h=270)
    env = dict(os.environ, SAMTRACK_CHECKPOINTS=str(ck_dir), SAMTRACK_CACHE_DIR=str(tmp_path / "cache"),
               CUDA_VISIBLE_DEVICES="")
    for i, code in enumerate(blocks):
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=1200)
        assert r.returncode == 0, f"README python block {i} failed:\n{code}\n{r.stderr[-3000:]}"
