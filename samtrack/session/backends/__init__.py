"""Model-family adapters, found through a lazy registry (as the readers are).

Only modules in this package import a model package (``sam2``, ``sam3``) or name its
state-dict keys. Each family module provides:

- ``load(spec, checkpoint, *, image_size=None, device="auto", **kw) -> Backend``;
- ``recognise(state_dict) -> str | None``: the registered model name a state dict
  belongs to, a description of an unregistered model of the family
  ("an unregistered Hiera (...)"), or None when it is not of this family.

``FAMILIES`` maps a registry family key to its module; ``ModelSpec.backend`` names
the key a model uses ("sam2" serves SAM2 and SAM2.1).
"""
from __future__ import annotations

import importlib
from typing import Any

from samtrack.errors import CheckpointError, UnknownModelError
from samtrack.session.backends.base import (Backend, DetectRequest, Detection, FrameFeatures, FrameHistory,
                                            MemoryEntry, MemoryView, StepOutput, TrackRequest)
from samtrack.session.devices import releases_openmp_team

FAMILIES: dict[str, str] = {
    "sam2": "samtrack.session.backends.sam2_backend",
    "sam3": "samtrack.session.backends.sam3_backend",
    "fake": "samtrack.session.backends.fake",
}
INSTALL = {"sam2": "run `make setup`, or `SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0`",
           "sam3": "run `make setup`, or `pip install 'samtrack[sam3]'`"}


def family_module(family: str):
    """The adapter module of ``family`` (imported on first use). Raises UnknownModelError for an
    unknown family and CheckpointError saying what to install when its model package is missing."""
    try:
        name = FAMILIES[family]
    except KeyError:
        raise UnknownModelError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise CheckpointError(f"the {family} model package cannot be imported ({e}): "
                              f"{INSTALL.get(family, 'install it')}") from e


@releases_openmp_team
def load_backend(spec, checkpoint, **kw) -> Backend:
    """Build ``spec``'s backend and load ``checkpoint`` (None: seeded random weights)."""
    return family_module(spec.backend).load(spec, checkpoint, **kw)


def recognise(state_dict: dict[str, Any]) -> str | None:
    """Which model a state dict belongs to, asking every family whose package imports."""
    for family in FAMILIES:
        if family == "fake":
            continue
        try:
            mod = family_module(family)
        except CheckpointError:
            continue
        found = mod.recognise(state_dict)
        if found:
            return found
    return None


__all__ = ["Backend", "DetectRequest", "Detection", "FAMILIES", "FrameFeatures", "FrameHistory", "MemoryEntry",
           "MemoryView", "StepOutput", "TrackRequest", "family_module", "load_backend", "recognise"]
