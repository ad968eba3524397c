"""The model registry (one row per supported model), the default model, and the model table.

Sources of the figures in the rows:

- SAM2 / SAM2.1: file names and direct URLs as published with sam2 (``checkpoints/
  download_ckpts.sh``); Hugging Face repositories ``facebook/sam2-hiera-*`` and
  ``facebook/sam2.1-hiera-*`` hold the same file names (sam2's ``build_sam.py`` maps them);
  parameter counts from the sam2 README.
- SAM3: ``sam3.pt`` (and ``config.json``) in the gated repository ``facebook/sam3``. Its
  parameter count, 860.1M, is what that file loads into: ``sam3`` 0.1.4's
  ``build_sam3_video_model`` counted here (detector 848.3M + tracker 11.7M; 1,465 state keys).
  Upstream publishes 848M, which is the detector alone (the image model); the tracker's
  memory encoder, memory attention and mask decoder come on top.
- Memory figures are never in a row: ``bench/model_memory.py`` measures them and writes
  ``model_memory.json`` beside this module (:func:`memory_figures`); a model without a
  measurement has none.

Gated models (SAM3): the hub only serves the file to an account that was granted access.
Open the model page (``https://huggingface.co/facebook/sam3``) while logged in, accept the
licence (access may take a review), create a read token at
``https://huggingface.co/settings/tokens``, then set ``HF_TOKEN`` or pass ``token=`` to
:func:`samtrack.session.checkpoints.download_checkpoint` (``--token`` to ``samtrack models
download``).

The default model (used when a caller names none) is stored in ``<cache>/models.json``
(``$SAMTRACK_CACHE_DIR``, default ``~/.cache/samtrack``) by :func:`set_default_model`;
without that file it is :data:`DEFAULT_MODEL`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from samtrack.errors import UnknownModelError

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"
_HF = "https://huggingface.co"
DEFAULT_MODEL = "sam2.1_hiera_tiny"  # without a stored default: the smallest SAM2.1, fast on a laptop CPU
MEMORY_FILE = Path(__file__).with_name("model_memory.json")  # written by bench/model_memory.py


@dataclass(frozen=True)
class ModelSpec:
    """One supported model. ``checkpoint`` is the file's name both on disk and in the Hugging Face
    repository ``hf_id``; ``hf_files`` are other files of that repository downloaded beside it."""

    name: str  # samtrack name, e.g. "sam2.1_hiera_tiny"
    family: str  # "sam2", "sam2.1" (one backend: "sam2") or "sam3"
    size: str  # tiny / small / base_plus / large; "full" for SAM3 (its one published size)
    config: str  # Hydra config inside the sam2 package; "" for SAM3 (built by sam3's model_builder)
    checkpoint: str  # official file name (on disk and in the hub repository)
    url: str  # official direct URL of the file
    hf_id: str  # Hugging Face repository id
    params_m: float  # parameters, millions (sources: module docstring)
    image_size: int = 1024  # the model's own input size in pixels (SAM3: 1008)
    gated: bool = False  # the hub serves the file only to accounts granted access (see the module docstring)
    hf_files: tuple[str, ...] = ()  # other files of the repository fetched with the checkpoint
    sha256: str | None = None  # not published upstream; the hub's own sha256 (LFS etag) is checked on download
    trunk_blocks: int = 0  # image-encoder blocks: identifies a checkpoint's size
    embed_dim: int = 0  # image-encoder width

    @property
    def backend(self) -> str:
        """The backend family key (``samtrack.session.backends.FAMILIES``): "sam2" serves SAM2 and SAM2.1."""
        return {"sam2": "sam2", "sam2.1": "sam2"}.get(self.family, self.family)

    @property
    def model_page(self) -> str:
        """The model's page on the Hugging Face hub (where gated access is requested)."""
        return f"{_HF}/{self.hf_id}"


def _sam2(family: str, size: str, cfg: str, params: float, blocks: int, dim: int) -> ModelSpec:
    stem = "sam2.1_hiera" if family == "sam2.1" else "sam2_hiera"
    name = f"{stem}_{size}"
    base = _BASE_21 if family == "sam2.1" else _BASE_20
    return ModelSpec(name, family, size, f"configs/{family}/{stem}_{cfg}.yaml", f"{name}.pt", f"{base}/{name}.pt",
                     f"facebook/{family}-hiera-{size.replace('_', '-')}", params, trunk_blocks=blocks, embed_dim=dim)


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    *(_sam2(fam, *row) for fam in ("sam2.1", "sam2") for row in (
        ("tiny", "t", 38.9, 12, 96), ("small", "s", 46.0, 16, 96), ("base_plus", "b+", 80.8, 24, 112),
        ("large", "l", 224.4, 48, 144))),
    ModelSpec("sam3", "sam3", "full", "", "sam3.pt", f"{_HF}/facebook/sam3/resolve/main/sam3.pt", "facebook/sam3",
              860.1, image_size=1008, gated=True, hf_files=("config.json",), trunk_blocks=32, embed_dim=1024),
)}
ALIASES = {"tiny": "sam2.1_hiera_tiny", "small": "sam2.1_hiera_small", "base_plus": "sam2.1_hiera_base_plus",
           "large": "sam2.1_hiera_large", "sam2.1_hiera_t": "sam2.1_hiera_tiny", "sam2.1_hiera_s": "sam2.1_hiera_small",
           "sam2.1_hiera_b+": "sam2.1_hiera_base_plus", "sam2.1_hiera_l": "sam2.1_hiera_large",
           "sam2_hiera_t": "sam2_hiera_tiny", "sam2_hiera_s": "sam2_hiera_small", "sam2_hiera_b+": "sam2_hiera_base_plus",
           "sam2_hiera_l": "sam2_hiera_large", "facebook/sam3": "sam3"}
ALIASES.update({m.hf_id: m.name for m in MODELS.values()})


def get_model(name: str | None = None) -> ModelSpec:
    """The registry row of ``name`` (a name, an alias such as "tiny", or a hub id); None: the default
    model (:func:`default_model`). Raises :class:`UnknownModelError` listing the known names."""
    if name is None:
        name = default_model()
    key = ALIASES.get(name, name)
    try:
        return MODELS[key]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


# -- the default model ---------------------------------------------------------------------
def settings_path() -> Path:
    """``<cache>/models.json``: the stored default model (``$SAMTRACK_CACHE_DIR``, else ``~/.cache/samtrack``)."""
    from samtrack.io.cache_meta import default_cache_root

    return default_cache_root() / "models.json"


def default_model() -> str:
    """The model used when none is named: the one stored by :func:`set_default_model`, else
    :data:`DEFAULT_MODEL`. Raises :class:`UnknownModelError` when the stored name is not in the
    registry (the message says how to set another)."""
    p = settings_path()
    try:
        name = json.loads(p.read_text()).get("default")
    except FileNotFoundError:
        return DEFAULT_MODEL
    except (OSError, ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or ALIASES.get(name, name) not in MODELS:
        raise UnknownModelError(f"the default model stored in {p} ({name!r}) is not one this samtrack knows: set one "
                                f"with `samtrack models default NAME` (NAME one of {', '.join(MODELS)}), or delete "
                                "that file")
    return ALIASES.get(name, name)


def set_default_model(name: str) -> ModelSpec:
    """Store ``name`` (any name :func:`get_model` takes) as the default model; returns its row.
    Raises :class:`UnknownModelError` for an unknown name, OSError when the cache folder is not writable."""
    spec = get_model(name)
    p = settings_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"default": spec.name}) + "\n")
    os.replace(tmp, p)  # atomic: another process reads the old or the new default, never half a file
    return spec


# -- the model table (CLI `samtrack models`, the viewer's model picker) --------------------
def memory_figures() -> dict[str, dict]:
    """Measured memory per model name, from ``model_memory.json`` (written by ``bench/model_memory.py``).

    Each value: ``params`` (count of the built model), ``image_size`` (pixels), ``fp32`` and
    ``bf16`` dicts with ``peak_rss_bytes`` (process RSS above its baseline while building the
    model on the CPU and encoding one frame at ``image_size``: weights plus that frame's
    activations), ``param_bytes`` and ``encode_s``; plus ``machine``, ``torch`` and ``date``.
    A model absent from the file has not been measured."""
    try:
        return dict(json.loads(MEMORY_FILE.read_text()).get("models", {}))
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class ModelRow:
    """One row of :func:`model_table`: a registry row and what this machine has of it."""

    spec: ModelSpec
    path: Path | None  # the checkpoint samtrack would use; None: absent
    disk_bytes: int | None  # its size on disk (bytes); None when absent
    memory: dict | None  # measured figures (:func:`memory_figures`); None: not measured
    default: bool  # the model used when none is named

    @property
    def present(self) -> bool:
        """Whether the checkpoint is on this machine."""
        return self.path is not None

    def to_dict(self) -> dict:
        """JSON-ready: the registry fields, present, path, disk_bytes, memory (or null), default."""
        s = self.spec
        return {"name": s.name, "family": s.family, "size": s.size, "params_m": s.params_m,
                "image_size": s.image_size, "checkpoint": s.checkpoint, "hf_id": s.hf_id, "hf_files": list(s.hf_files),
                "model_page": s.model_page, "url": s.url, "gated": s.gated, "present": self.present,
                "path": str(self.path) if self.path else None, "disk_bytes": self.disk_bytes, "memory": self.memory,
                "default": self.default}


def model_table() -> list[ModelRow]:
    """Every registered model, in registry order, with where its checkpoint is (or None), its size
    on disk, its measured memory (or None) and whether it is the default. Looks only at local
    files (the folders of :func:`samtrack.session.checkpoints.checkpoint_dirs` and the hub caches);
    never touches the network. An unusable stored default marks no row."""
    from samtrack.session.checkpoints import find_checkpoint

    try:
        default = default_model()
    except UnknownModelError:
        default = None
    memory = memory_figures()
    rows = []
    for spec in MODELS.values():
        path = find_checkpoint(spec)
        rows.append(ModelRow(spec, path, path.stat().st_size if path else None, memory.get(spec.name),
                             spec.name == default))
    return rows
