"""The model registry: one row per supported model.

Checkpoint URLs are the official ones published with sam2 (``checkpoints/
download_ckpts.sh``); Hugging Face ids are the ``facebook/...`` repositories.
Parameter counts are those published in the sam2 README; memory figures are
approximate fp32 weights + one 1024 px frame's activations.
"""
from __future__ import annotations

from dataclasses import dataclass

from samtrack.errors import UnknownModelError

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # samtrack name, e.g. "sam2.1_hiera_tiny"
    family: str  # "sam2" or "sam2.1" (same backend), "sam3" later
    size: str  # tiny / small / base_plus / large
    config: str  # Hydra config inside the sam2 package
    checkpoint: str  # official file name
    url: str
    hf_id: str
    params_m: float
    approx_memory_gb: float
    sha256: str | None = None  # not published upstream; filled from a verified download when known
    trunk_blocks: int = 0  # Hiera blocks: identifies a checkpoint's size
    embed_dim: int = 0

    @property
    def backend(self) -> str:
        """The backend family key (``samtrack.session.backends.FAMILIES``): "sam2" serves SAM2 and SAM2.1."""
        return {"sam2": "sam2", "sam2.1": "sam2"}.get(self.family, self.family)


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("sam2.1_hiera_tiny", "sam2.1", "tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt",
              f"{_BASE_21}/sam2.1_hiera_tiny.pt", "facebook/sam2.1-hiera-tiny", 38.9, 1.0, trunk_blocks=12, embed_dim=96),
    ModelSpec("sam2.1_hiera_small", "sam2.1", "small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt",
              f"{_BASE_21}/sam2.1_hiera_small.pt", "facebook/sam2.1-hiera-small", 46.0, 1.2, trunk_blocks=16, embed_dim=96),
    ModelSpec("sam2.1_hiera_base_plus", "sam2.1", "base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt",
              f"{_BASE_21}/sam2.1_hiera_base_plus.pt", "facebook/sam2.1-hiera-base-plus", 80.8, 1.6, trunk_blocks=24, embed_dim=112),
    ModelSpec("sam2.1_hiera_large", "sam2.1", "large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt",
              f"{_BASE_21}/sam2.1_hiera_large.pt", "facebook/sam2.1-hiera-large", 224.4, 2.8, trunk_blocks=48, embed_dim=144),
    ModelSpec("sam2_hiera_tiny", "sam2", "tiny", "configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt",
              f"{_BASE_20}/sam2_hiera_tiny.pt", "facebook/sam2-hiera-tiny", 38.9, 1.0, trunk_blocks=12, embed_dim=96),
    ModelSpec("sam2_hiera_small", "sam2", "small", "configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt",
              f"{_BASE_20}/sam2_hiera_small.pt", "facebook/sam2-hiera-small", 46.0, 1.2, trunk_blocks=16, embed_dim=96),
    ModelSpec("sam2_hiera_base_plus", "sam2", "base_plus", "configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt",
              f"{_BASE_20}/sam2_hiera_base_plus.pt", "facebook/sam2-hiera-base-plus", 80.8, 1.6, trunk_blocks=24, embed_dim=112),
    ModelSpec("sam2_hiera_large", "sam2", "large", "configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt",
              f"{_BASE_20}/sam2_hiera_large.pt", "facebook/sam2-hiera-large", 224.4, 2.8, trunk_blocks=48, embed_dim=144),
)}
ALIASES = {"tiny": "sam2.1_hiera_tiny", "small": "sam2.1_hiera_small", "base_plus": "sam2.1_hiera_base_plus",
           "large": "sam2.1_hiera_large", "sam2.1_hiera_t": "sam2.1_hiera_tiny", "sam2.1_hiera_s": "sam2.1_hiera_small",
           "sam2.1_hiera_b+": "sam2.1_hiera_base_plus", "sam2.1_hiera_l": "sam2.1_hiera_large",
           "sam2_hiera_t": "sam2_hiera_tiny", "sam2_hiera_s": "sam2_hiera_small", "sam2_hiera_b+": "sam2_hiera_base_plus",
           "sam2_hiera_l": "sam2_hiera_large"}


def get_model(name: str) -> ModelSpec:
    key = ALIASES.get(name, name)
    try:
        return MODELS[key]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
