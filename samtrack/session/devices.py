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


def serial_torch_in_this_thread() -> None:
    """Call first on a samtrack background thread that may run torch CPU ops (the model-input
    prefetch thread, the session flusher): that thread's torch ops then run on it alone, without an
    OpenMP team of their own. Only with torch's OpenMP backend (the Linux and Windows wheels), where
    ``torch.set_num_threads`` sets the calling thread's OpenMP ICV only; elsewhere it would change
    every thread's count, and nothing is done.

    Why (measured on the 2-core CPU VM, session 10): a thread that once ran a parallel torch op keeps
    its own OpenMP team while it lives; libgomp then manages more threads than there are cores and
    the tracking thread's many small parallel regions run slower: a fixed SAM2 tracking step (512 px)
    took 255-265 ms while a session's prefetch thread was alive and 226-231 ms after it ended, and a
    synthetic many-small-ops load 0.72 s vs 0.92-0.95 s. These threads' work (uint8 resize, copies)
    is not parallel anyway (a 1080p -> 1024 resize: 4.3 ms with 2 threads, 4.2 ms with 1)."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)
