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
        if "samtrack.connect(" in code:  # the remote example: a real `samtrack serve --root .` on 127.0.0.1:8765
            r = _run_against_a_server(code, tmp_path, env)
        else:
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=1200)
        assert r.returncode == 0, f"README python block {i} failed:\n{code}\n{r.stderr[-3000:]}"
    assert (tmp_path / "masks.tif").is_file()  # the remote example downloaded its export


def _run_against_a_server(code: str, tmp_path, env):
    """The README's server runs with its defaults: port 8765, the token in ~/.config/samtrack/token (HOME is a
    temporary folder here), the current folder as its root."""
    from tests.server_utils import ServerProcess

    home = tmp_path / "home"
    srv = ServerProcess(roots=[tmp_path], workdir=home / ".config" / "samtrack", env=env)
    srv.port = 8765
    with srv:
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "HOME": str(home)},
                              capture_output=True, text=True, timeout=1200)
