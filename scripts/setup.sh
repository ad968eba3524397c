#!/usr/bin/env bash
# One-time, idempotent set-up of a development environment in .venv.
# Order matters: torch is installed first (a pinned CPU/CUDA build), then sam2
# without build isolation, otherwise sam2's build pulls a multi-GB CUDA torch
# into its isolated build environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"

# System packages for napari under a virtual display (tests marked gui).
need_apt=()
command -v Xvfb >/dev/null 2>&1 || need_apt+=(xvfb)
for lib in libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 libfontconfig1 libdbus-1-3; do
  dpkg -s "$lib" >/dev/null 2>&1 || need_apt+=("$lib")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${need_apt[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" || \
      echo "setup: WARNING could not install ${need_apt[*]}; gui tests will be skipped"
  else
    echo "setup: WARNING missing ${need_apt[*]} (not root): gui tests will be skipped"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# pip on some machines warns about every missing local index location: keep errors, drop that noise
pipi() { "$VPY" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pipi --upgrade pip setuptools wheel

if ! $VPY -c "import torch" >/dev/null 2>&1; then
  pipi "torch==${TORCH_VERSION}"
fi
if ! $VPY -c "import torchvision" >/dev/null 2>&1; then
  pipi --no-deps "torchvision==${TORCHVISION_VERSION}" || \
    echo "setup: WARNING torchvision ${TORCHVISION_VERSION} not installed"
fi
# Runtime deps of sam2 first, so that --no-build-isolation finds them.
pipi "hydra-core>=1.3.2" "iopath>=0.1.10" "tqdm>=4.66" "pillow>=9.4" "numpy>=1.24"
if ! $VPY -c "import sam2" >/dev/null 2>&1; then
  SAM2_BUILD_CUDA=0 pipi --no-build-isolation --no-deps "sam2==1.1.0"
fi
pipi -e ".[dev,viewer,export]"
# SAM3: the `sam3` extra (sam3 0.1.4 pins numpy<2.4 and typing_extensions<4.16; pydantic<2.13 stays
# within that pin; scikit-image runs its CPU connected components). open_clip_torch is there only for the
# BPE vocabulary the sam3 wheel lacks: installed first with --no-deps, so that it cannot pull another
# torch or torchvision (torch stays the pinned build above). Its tests run in the default suite.
if ! $VPY -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('sam3') and u.find_spec('open_clip') and u.find_spec('skimage')))"; then
  pipi --no-deps "open_clip_torch>=2.23"
  pipi -e ".[sam3]" "pydantic<2.13"
fi
# Ray: the `ray` extra (samtrack batch --executor ray); its tests run in the default suite.
$VPY -c "import ray" >/dev/null 2>&1 || pipi "ray>=2.58,<3"
# Remote sessions: the `server` extra (samtrack serve, samtrack.connect); its tests run in the default suite.
$VPY -c "import fastapi, uvicorn, httpx" >/dev/null 2>&1 || pipi -e ".[server]" "pydantic<2.13"
# decord is optional (faster mp4 decode); it has no wheel on some platforms.
pipi "decord>=0.6.0" || echo "setup: decord not available; PyAV is used"
$VPY - <<'PYEOF'
import torch, sam2, av, zarr, tifffile
print(f"setup: ok  torch {torch.__version__}  sam2  av {av.__version__}  zarr {zarr.__version__}  tifffile {tifffile.__version__}")
PYEOF
touch .venv/.samtrack-setup-done
