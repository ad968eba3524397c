"""Memory of each registered model, measured: the figures `samtrack models` shows.

For every model and dtype, a fresh process builds the model on the CPU through the backend
registry (random weights: the size does not depend on their values), then encodes one frame
at the model's own input size (1024 px for SAM2/SAM2.1, 1008 px for SAM3). Recorded:

- ``params``: parameters of the built model; ``param_bytes``: their bytes as built (fp32);
- ``peak_rss_bytes``: the process's peak RSS while encoding the frame (the kernel's VmHWM,
  reset with ``/proc/self/clear_refs`` just before) minus its RSS before the build: the
  weights plus one frame's activations. A first encode runs before, so one-time costs of the
  process (kernel caches, thread pools) and the build's transient peak are not counted;
- ``model_rss_bytes``: RSS above the baseline after the build and the first encode (at rest);
- ``encode_s``, ``first_encode_s``, ``build_s``: seconds on this machine (informational only).

``fp32`` runs the encoder in float32 (samtrack on a CPU); ``bf16`` keeps fp32 weights and runs
it under bfloat16 autocast, as samtrack runs on CUDA (measured here with CPU autocast, a proxy
for the device's activation memory). Results merge into ``samtrack/session/model_memory.json``
(models not measured keep their earlier entry, or none: the table then says "not measured").

Usage: python bench/model_memory.py [MODEL ...] [--dtype fp32 --dtype bf16] [--timeout 900]
Without MODEL: every registered model (the large ones take many minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "samtrack" / "session" / "model_memory.json"


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed build temporaries back to the system
    except (OSError, AttributeError):
        pass


def _modules(backend):
    import torch

    seen, mods = set(), []
    for v in vars(backend).values():
        if isinstance(v, torch.nn.Module) and id(v) not in seen:
            seen.add(id(v))
            mods.append(v)
    return mods


def child(name: str, dtype: str) -> dict:
    """Build ``name`` and encode one frame in this process; returns the figures."""
    import torch

    from samtrack.session.backends import load_backend
    from samtrack.session.models import get_model

    spec = get_model(name)
    torch.manual_seed(0)
    _trim()
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    backend = load_backend(spec, None, image_size=spec.image_size, device="cpu")
    build_s = time.perf_counter() - t0
    params = {id(p): p for m in _modules(backend) for p in m.parameters()}
    n_params = sum(p.numel() for p in params.values())
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    S = backend.image_size
    image = torch.randn(3, S, S, generator=torch.Generator().manual_seed(0))

    def encode() -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        t0 = time.perf_counter()
        with torch.inference_mode(), ctx:
            feats = backend.encode_image(image, 0)
        del feats
        return time.perf_counter() - t0

    first_s = encode()  # one-time costs (kernel caches, thread pools) are not the model's
    _trim()
    model_rss = _status_bytes("VmRSS") - base
    _reset_peak()
    encode_s = encode()
    peak = _status_bytes("VmHWM")
    return {"params": n_params, "image_size": S, "param_bytes": param_bytes, "peak_rss_bytes": peak - base,
            "model_rss_bytes": model_rss, "encode_s": round(encode_s, 2), "first_encode_s": round(first_s, 2),
            "build_s": round(build_s, 2)}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def main() -> None:
    from samtrack.session.models import MODELS, get_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="model names (default: all)")
    ap.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="repeatable (default both)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model and dtype")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    import torch

    names = [get_model(n).name for n in a.models] or list(MODELS)
    try:
        data = json.loads(a.out.read_text())
    except (OSError, ValueError):
        data = {}
    data = {"format": 1, "description": "bench/model_memory.py: peak RSS above baseline of building the model on "
            "the CPU and encoding one frame at its input size; bf16 = fp32 weights under bf16 autocast",
            "models": data.get("models", {})}
    for name in names:
        entry: dict = {}
        for dtype in a.dtype or ["fp32", "bf16"]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, dtype]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                print(f"{name} {dtype}: not measured (over {a.timeout:.0f} s)", flush=True)
                continue
            if r.returncode != 0:
                print(f"{name} {dtype}: not measured ({r.stderr.strip().splitlines()[-1:]})", flush=True)
                continue
            fig = json.loads(r.stdout.strip().splitlines()[-1])
            entry.update(params=fig.pop("params"), image_size=fig.pop("image_size"))
            entry[dtype] = fig
            print(f"{name} {dtype}: {entry['params'] / 1e6:.1f}M params, peak {fig['peak_rss_bytes'] / 2**30:.2f} GiB "
                  f"(weights {fig['param_bytes'] / 2**30:.2f} GiB), encode {fig['encode_s']} s, build "
                  f"{fig['build_s']} s", flush=True)
        if entry:
            entry.update(machine=_machine(), torch=torch.__version__, date=datetime.date.today().isoformat())
            data["models"][name] = {**data["models"].get(name, {}), **entry}
            a.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
