"""Which compute device a session runs on (model-independent)."""
from __future__ import annotations

import torch

from samtrack.errors import InvalidOptionError


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps"; a device this machine
    lacks is an :class:`InvalidOptionError` that says what it has."""
    if str(device) != "auto":
        try:
            d = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise InvalidOptionError(f"device={device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from e
        has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        ok = {"cpu": True, "cuda": n_cuda > (d.index or 0), "mps": has_mps}.get(d.type, False)
        if not ok:
            here = ["cpu"] + [f"cuda:{i}" for i in range(n_cuda)] + (["mps"] if has_mps else [])
            raise InvalidOptionError(f"device={device!r} is not available here (this machine has "
                                     f"{', '.join(here)}); use device='auto' or one of those")
        return d
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
