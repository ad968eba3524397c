#!/usr/bin/env bash
# Wheels the lent GPU machine lacks, for bench/gpu_check.sh (see the device tool's README: that machine
# has python 3.12 with CUDA torch, numpy, opencv, pillow, tifffile, typer, rich, pytest, huggingface_hub,
# and cannot reach the internet). Run HERE, in the repo root, once per session that has a GPU; the
# wheels (~45 MB) go to .whl/, which git ignores locally; then pass carry=[".whl"] to the device run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
    av==18.1.0 natsort==8.4.0
# sdists only on PyPI (pure Python): built here; sam2 without its CUDA extension, as `make setup` installs it
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl \
    iopath==0.1.10 antlr4-python3-runtime==4.9.3 sam2==1.1.0
ls -1 .whl
du -sh .whl
