"""From original samples (uint8/uint16/float, 1-N channels) to display RGB uint8.

16-bit and float microscopy is windowed explicitly: per channel, the
``low``/``high`` percentiles of pixels sampled over the stack (0.5 / 99.5 % by
default) map to 0 / 255. Converting through PIL's RGB mode instead saturates
almost every 16-bit pixel. Channels become RGB through an explicit colour per
channel: one channel is gray, two are magenta + green, three are R, G, B.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samtrack.errors import InvalidOptionError

GRAY = (1.0, 1.0, 1.0)
DEFAULT_COLORS = {
    1: (GRAY,),
    2: ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    3: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}


@dataclass(frozen=True)
class Intensity:
    """How original samples become display RGB.

    ``mode``: "auto" (identity for uint8, percentile window otherwise),
    "percentile" (window from ``low``/``high`` percentiles over sampled frames),
    "per_frame" (a percentile window computed on every frame), or "range"
    (the fixed ``window`` given, one (lo, hi) per channel or one for all).
    ``colors``: one RGB weight triple per channel; default by channel count.
    """

    mode: str = "auto"
    low: float = 0.5
    high: float = 99.5
    window: tuple[tuple[float, float], ...] | None = None
    colors: tuple[tuple[float, float, float], ...] | None = None
    sample_frames: int = 64

    def __post_init__(self):
        if self.mode not in ("auto", "percentile", "per_frame", "range"):
            raise InvalidOptionError(f"intensity mode {self.mode!r}: use auto, percentile, per_frame or range")
        if not 0 <= self.low < self.high <= 100:
            raise InvalidOptionError(f"percentiles low={self.low}, high={self.high}: need 0 <= low < high <= 100")
        if self.mode == "range" and not self.window:
            raise InvalidOptionError("intensity mode 'range' needs window=((lo, hi), ...)")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "low": self.low, "high": self.high,
                "window": [list(w) for w in self.window] if self.window else None,
                "colors": [list(c) for c in self.colors] if self.colors else None,
                "sample_frames": self.sample_frames}


@dataclass(frozen=True)
class DisplayMapping:
    """The resolved mapping stored with a cache: a window and a colour per channel."""

    windows: tuple[tuple[float, float], ...] | None  # None: per-frame windows
    colors: tuple[tuple[float, float, float], ...]
    identity: bool = False  # uint8 RGB/gray passes through unchanged
    percentiles: tuple[float, float] = (0.5, 99.5)

    def to_dict(self) -> dict:
        return {"windows": [list(w) for w in self.windows] if self.windows is not None else None,
                "colors": [list(c) for c in self.colors], "identity": self.identity,
                "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, d: dict) -> "DisplayMapping":
        w = d.get("windows")
        return cls(tuple(tuple(x) for x in w) if w is not None else None,
                   tuple(tuple(c) for c in d["colors"]), bool(d.get("identity")), tuple(d.get("percentiles", (0.5, 99.5))))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(H, W, C) original samples -> (H, W, 3) uint8 RGB."""
        if self.identity:
            return _identity_rgb(raw)
        windows = self.windows if self.windows is not None else frame_window(raw, *self.percentiles)
        h, w, c = raw.shape
        out = np.zeros((h, w, 3), np.float32)
        for ch in range(c):
            lo, hi = windows[ch]
            x = raw[..., ch].astype(np.float32)
            x = (x - lo) * (1.0 / max(hi - lo, 1e-12))
            np.clip(x, 0.0, 1.0, out=x)
            x[np.isnan(x)] = 0.0
            col = self.colors[ch]
            for k in range(3):
                if col[k]:
                    out[..., k] += x * col[k]
        np.clip(out, 0.0, 1.0, out=out)
        return (out * 255.0 + 0.5).astype(np.uint8)


def _identity_rgb(raw: np.ndarray) -> np.ndarray:
    c = raw.shape[2]
    if c == 3:
        return raw
    if c == 4:
        return np.ascontiguousarray(raw[..., :3])
    if c == 1:
        return np.repeat(raw, 3, axis=2)
    out = np.zeros(raw.shape[:2] + (3,), np.uint8)
    out[..., :c] = raw
    return out


def frame_window(raw: np.ndarray, low: float, high: float) -> tuple[tuple[float, float], ...]:
    return tuple(_window(raw[..., ch].ravel(), low, high) for ch in range(raw.shape[2]))


def _window(samples: np.ndarray, low: float, high: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)] if samples.dtype.kind == "f" else samples
    if samples.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(samples, [low, high])
    lo, hi = float(lo), float(hi)
    if hi <= lo:  # constant image: keep it visible, not divided by zero
        hi = lo + 1.0
    return (lo, hi)


def sample_indices(n_frames: int, k: int) -> list[int]:
    k = max(1, min(k, n_frames))
    return sorted(set(np.linspace(0, n_frames - 1, k).round().astype(int).tolist()))


def resolve_mapping(reader, intensity: Intensity, *, progress=None) -> DisplayMapping:
    """Decide the display mapping for a source (samples frames for percentile windows)."""
    info = reader.info
    c = info.channels
    colors = intensity.colors or DEFAULT_COLORS.get(c)
    if colors is None or len(colors) != c:
        raise InvalidOptionError(f"{c} channels need {c} colours (colors=...), got {intensity.colors}")
    pct = (intensity.low, intensity.high)
    mode = intensity.mode
    if mode == "auto":
        if info.dtype == "uint8":
            return DisplayMapping(None, tuple(colors), identity=True, percentiles=pct)
        mode = "percentile"
    if mode == "range":
        win = intensity.window
        win = tuple(win) * c if len(win) == 1 else tuple(win)
        if len(win) != c:
            raise InvalidOptionError(f"window has {len(win)} entries for {c} channels")
        return DisplayMapping(tuple(tuple(map(float, w)) for w in win), tuple(colors), percentiles=pct)
    if mode == "per_frame":
        return DisplayMapping(None, tuple(colors), percentiles=pct)
    idx = sample_indices(info.n_frames, intensity.sample_frames)
    per_channel: list[list[np.ndarray]] = [[] for _ in range(c)]
    step = max(1, int(np.sqrt(info.height * info.width / 250_000)))  # at most ~250k pixels a frame
    for n, i in enumerate(idx):
        raw = reader.read_raw(i)[::step, ::step]
        for ch in range(c):
            per_channel[ch].append(raw[..., ch].ravel())
        if progress:
            progress(n + 1, len(idx))
    windows = tuple(_window(np.concatenate(v), *pct) for v in per_channel)
    return DisplayMapping(windows, tuple(colors), percentiles=pct)
