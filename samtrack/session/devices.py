"""Which compute device a session runs on (model-independent), and how its CPU threads share the cores."""
from __future__ import annotations

import functools
import inspect

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
    OpenMP team of their own. Sets the OpenMP runtime's thread count of the calling thread only
    (``omp_set_num_threads(1)`` of the libgomp / libiomp5 that torch loaded, after torch's own lazy
    per-thread setup): ``torch.set_num_threads(1)`` would also set the count every thread created
    afterwards starts with (the server's and viewer's propagation threads would have run serial).
    Does nothing where no OpenMP runtime is found loaded (other platforms, other torch builds).

    Why (measured on the 2-core CPU VM, session 10): a thread that once ran a parallel torch op keeps
    its own OpenMP team while it lives; libgomp then manages more threads than there are cores and
    the tracking thread's many small parallel regions run slower: a fixed SAM2 tracking step (512 px)
    took 258-283 ms while a session's prefetch thread was alive and 230-243 ms after it ended, and a
    synthetic many-small-ops load 0.72 s vs 0.92-0.95 s. These threads' work (uint8 resize, copies)
    is not parallel anyway (a 1080p -> 1024 resize: 4.3 ms with 2 threads, 4.2 ms with 1)."""
    omp = _openmp_runtime()
    if omp is not None:
        torch.get_num_threads()  # torch's per-thread setup first (it would set the count again later)
        omp.omp_set_num_threads(1)


def release_openmp_team() -> bool:
    """End the OpenMP team of the calling thread (its idle OpenMP worker threads exit), so that only
    threads computing now hold one. The thread's next parallel torch op starts a team again (one thread
    start per worker: well under a millisecond). Calls ``omp_pause_resource_all(omp_pause_soft)``
    (OpenMP 5.0) of the libgomp that torch loaded; libgomp frees the calling thread's pool only
    (``gomp_pause_host`` in its team.c) and refuses inside a parallel region. Returns True when a team
    was ended or none was held; False where nothing was done: no libgomp loaded (other platforms, torch
    builds with Intel's libiomp5, whose pause is process-wide), a libgomp older than GCC 9 (no pause),
    or a call from inside a parallel region.

    Why (measured on the 2-core CPU VM, session 11): libgomp manages every idle team's threads too, and
    when it manages more threads than there are cores it makes every team's workers sleep after ~100
    spins (``gomp_throttled_spin_count_var``) instead of ~3 ms, so each of the tracking step's many small
    parallel regions pays a futex wake-up. A thread that ran a prompt keeps its team: in the viewer that
    is the UI thread, in the server a pool thread. Propagating in another thread then took 93 ms per
    frame instead of 60 ms (256 px, random-init SAM2.1 tiny, features cached), a small-ops load 0.49-0.66 s
    instead of 0.10 s."""
    omp = _openmp_runtime()
    pause = getattr(omp, "omp_pause_resource_all", None) if _OMP_NAME[0].startswith("libgomp") else None
    return pause is not None and pause(1) == 0  # 1: omp_pause_soft


def releases_openmp_team(fn):
    """Decorator for a session entry point that computes with torch (a prompt, a find, a propagation,
    building a model): when it returns or raises (a generator: when it finishes or is closed), the calling
    thread's OpenMP team is ended with :func:`release_openmp_team`, so a thread that goes idle afterwards
    (the viewer's UI thread, a server's request thread) holds none while another thread tracks."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                return (yield from fn(*args, **kwargs))
            finally:
                release_openmp_team()
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_openmp_team()
    return call


_OMP: list = []
_OMP_NAME: list = [""]


def _openmp_runtime():
    """The OpenMP runtime torch uses in this process (ctypes handle), or None. Another copy may be loaded
    beside it (scikit-learn's and imagecodecs' wheels bundle their own libgomp): where several are, the
    one whose thread count torch reads (:func:`_torch_reads`) is taken; None when none is."""
    if not _OMP:
        lib = None
        if "parallel backend: OpenMP" in torch.__config__.parallel_info():
            try:
                import ctypes

                with open("/proc/self/maps") as f:
                    paths = sorted({line.split()[-1] for line in f if ".so" in line})
                found = [(ctypes.CDLL(p), n) for p, n in ((p, p.rsplit("/", 1)[-1]) for p in paths)
                         if n.startswith(("libgomp", "libiomp5"))]
                for cand, name in found:
                    if len(found) == 1 or _torch_reads(cand):
                        lib = cand
                        _OMP_NAME[0] = name
                        break
            except OSError:  # no /proc (not Linux), or the library cannot be opened again
                lib = None
        _OMP.append(lib)
    return _OMP[0]


def _torch_reads(lib) -> bool:
    """Whether torch's ops use OpenMP runtime ``lib``: a thread count set through it is the one
    ``torch.get_num_threads()`` reads. Tried on a thread of its own (it ends with its count)."""
    seen: list = []

    def probe():
        try:
            n = torch.get_num_threads()  # torch's per-thread setup first (it sets the count once)
            lib.omp_set_num_threads(n + 1)
            seen.append(torch.get_num_threads() == n + 1)
        except AttributeError:  # not an OpenMP runtime after all
            seen.append(False)

    import threading

    t = threading.Thread(target=probe, name="samtrack-openmp-probe", daemon=True)
    t.start()
    t.join()
    return bool(seen and seen[0])
