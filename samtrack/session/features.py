"""Where a session's image features come from: RAM, the feature store on disk, or the encoder.

A mixin of :class:`~samtrack.session.session.TrackingSession` (it uses the session's
``frames``, ``backend``, ``features``, ``config``, ``_features`` and ``_cancel``).
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from samtrack.errors import InvalidOptionError
from samtrack.io.model_input import normalize, resize_uint8
from samtrack.session.devices import releases_openmp_team, serial_torch_in_this_thread
from samtrack.session.inflight import to_host

log = logging.getLogger(__name__)

_PREFETCHED = 2  # model inputs prepared ahead at most (the next frame, and one a sweep skipped)


class FeatureSource:
    """Image features of a frame, computed once: an LRU in RAM, then the work folder's feature store."""

    def _frame_features(self, f: int):
        """Frame ``f``'s image features: from RAM, else from the feature store, else encoded (and stored)."""
        if self._ahead_error is not None:  # encoding frame g ahead failed: raised at g's step, before it runs
            (g, err), self._ahead_error = self._ahead_error, None
            if g == f:
                raise err
            log.warning("encoding frame %d ahead failed (%s: %s); it was not needed", g, type(err).__name__, err)
        feats = self._features.get(f)
        if feats is not None:
            self._features.move_to_end(f)
            return feats
        rows = None
        if self.features is not None:
            fut: Future | None = self._stored.pop(f, None)  # read ahead on the prefetch thread
            rows = fut.result() if fut is not None and not fut.cancelled() else self.features.get(f)
        if rows is not None:
            feats = self.backend.features_from_store(
                {k: _from_numpy(v, self.features.dtype(k)) for k, v in rows.items()}, f)
        else:
            feats = self._encode(f)
        self._features[f] = feats
        while len(self._features) > self.config.feature_cache_frames:
            self._features.popitem(last=False)
        return feats

    def _encode_ahead(self, f: int) -> None:
        """Encode frame ``f`` now, ahead of the step that reads it (called right after the previous
        frame's step was launched). On CUDA the encoder runs on a side stream, so it overlaps that
        step on the device while the host goes on; the main stream then waits for the side stream,
        which holds back only work queued after this call (frame ``f``'s step, which needs these
        features anyway), not the step already launched. On the CPU it simply runs now. Frames in
        RAM or in the feature store are left to :meth:`_frame_features`. A failure (a frame that
        cannot be read, a feature-store write) is not raised here, where it would cost the frame in
        flight its results, but when frame ``f``'s features are asked for next (its step, before it
        runs); if another frame's are asked for first (the sweep stopped), it is logged as a warning."""
        if self._closed or not 0 <= f < self.n_frames or f in self._features:
            return
        if self.features is not None and f in self.features:
            return
        try:
            self._encode_on_side_stream(f)
        except Exception as e:  # noqa: BLE001  (raised by the next _frame_features call, frame f's step)
            log.debug("encoding frame %d ahead failed; raised at its step", f, exc_info=True)
            self._ahead_error = (f, e)

    def _encode_on_side_stream(self, f: int) -> None:
        device = torch.device(self.backend.device)
        if device.type != "cuda":
            self._frame_features(f)
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device)
            # once: the weights (and anything else made before) are ready. Not before every frame, which
            # would queue the encoder behind the step just launched: the encoder reads only the weights and
            # its own input, uploaded on the side stream; blocks the allocator hands the side stream were
            # freed by it (the allocator's pools are per stream)
            self._side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side_stream):
            feats = self._frame_features(f)
        _join_side_stream(self._side_stream, feats.data)

    def _prefetch_input(self, f: int) -> None:
        """Start preparing what frame ``f``'s step needs on a background thread, so the tracking step
        of the frame before it overlaps that host work: the model input (read, resize, normalize on
        the CPU; read, resize and pin for a GPU) when ``f`` will be encoded (frame decode and resize
        are ~40 % of a 1080p frame's host time), or its stored features' rows when the feature store
        has them (read and decompress: 8 MB per frame at 1024 px, a re-propagation's main host cost).
        Errors surface at frame ``f``'s step, as without prefetching."""
        if self._closed or f in self._inputs or f in self._stored or f in self._features \
                or not 0 <= f < self.n_frames:
            return
        if self._input_pool is None:
            self._input_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samtrack-input",
                                                  initializer=serial_torch_in_this_thread)
        if self.features is not None and f in self.features:
            self._stored[f] = self._input_pool.submit(self.features.get, f)
            while len(self._stored) > _PREFETCHED:
                self._stored.pop(next(iter(self._stored))).cancel()
            return
        self._inputs[f] = self._input_pool.submit(self._host_input, f)
        while len(self._inputs) > _PREFETCHED:  # a frame prepared but never encoded (a sweep that stopped)
            self._inputs.pop(next(iter(self._inputs))).cancel()

    def _host_input(self, f: int) -> torch.Tensor:
        spec, device = self.backend.input_spec, self.backend.device
        on_gpu = torch.device(device).type == "cuda"
        x = resize_uint8(self.frames.read(f), spec.size, pin=on_gpu)
        return x if on_gpu else normalize(x, spec)

    def _model_input(self, f: int) -> torch.Tensor:
        """Frame ``f``'s model input (3, S, S) float32 on the backend's device: prefetched, or prepared now."""
        fut: Future | None = self._inputs.pop(f, None)
        x = fut.result() if fut is not None and not fut.cancelled() else self._host_input(f)
        return normalize(x, self.backend.input_spec, self.backend.device) if x.dtype == torch.uint8 else x

    def _close_inputs(self) -> None:
        """Drop prefetched inputs, stop the prefetch thread (after the frame it prepares) and wait for
        an encoder running ahead on the side stream."""
        for fut in [*self._inputs.values(), *self._stored.values()]:
            fut.cancel()
        self._inputs.clear()
        self._stored.clear()
        self._ahead_error = None
        if self._side_stream is not None:
            self._side_stream.synchronize()  # an encoder still running ahead finishes before the stores close
        if self._input_pool is not None:
            self._input_pool.shutdown(wait=True)
            self._input_pool = None

    def _encode(self, f: int):
        """Run the image encoder on frame ``f``; its features go to the feature store too. On a GPU
        the copy to the host is asynchronous (pinned memory and an event) and is stored when the
        next frame is encoded, so the loop never waits for it; on the CPU it is stored at once."""
        feats = self.backend.encode_image(self._model_input(f), f)
        if self.features is not None:
            self._store_features()  # the previous frame's copy has had a whole frame to finish
            host, event = to_host(self.backend.features_to_store(feats))
            self._features_in_flight = (f, host, event)
            if event is None:
                self._store_features()
        return feats

    def _store_features(self) -> None:
        """Put the features copied to the host last into the feature store."""
        if self._features_in_flight is None:
            return
        f, host, event = self._features_in_flight
        self._features_in_flight = None
        if event is not None:
            event.synchronize()
        rows = {k: _to_numpy(t) for k, t in host.items()}
        self.features.put(f, {k: v for k, (v, _) in rows.items()}, {k: d for k, (_, d) in rows.items()})

    @releases_openmp_team
    def precompute_features(self, start: int = 0, stop: int | None = None, *,
                            progress: Callable[[int, int], None] | None = None) -> int:
        """Encode frames ``start..stop`` (inclusive) that the feature store lacks, ahead of prompting and
        tracking (as micro-sam precomputes embeddings); returns how many were encoded. ``stop`` before
        ``start`` is the same range (as in :meth:`plan`). ``progress(done, total)`` counts the frames of the
        range. Needs ``SessionConfig(feature_store=True)``. Raises InvalidOptionError without a feature
        store, FrameIndexError for a frame outside the video, CacheError when the store cannot be written
        (disk full, a read-only folder: the message says what to do)."""
        if self.features is None:
            raise InvalidOptionError("this session keeps no feature store: open it with "
                                     "SessionConfig(feature_store=True) and a backend that supports one")
        lo, hi = self._check_frame(start), self.n_frames - 1 if stop is None else self._check_frame(stop)
        lo, hi = min(lo, hi), max(lo, hi)
        self._cancel.clear()
        encoded = 0
        dropping, self.features.drop_when_behind = self.features.drop_when_behind, False  # keep every frame
        try:
            for i, f in enumerate(range(lo, hi + 1)):
                if f not in self.features:
                    if f < hi and f + 1 not in self.features:  # a stored frame's rows are not needed here
                        self._prefetch_input(f + 1)
                    self._encode(f)
                    encoded += 1
                if progress:
                    progress(i + 1, hi - lo + 1)
                if self._cancel.is_set():
                    break
            self._store_features()
            self.features.flush()
        finally:
            self.features.drop_when_behind = dropping
        return encoded


def _join_side_stream(side, data) -> None:
    """The current stream waits for ``side`` (everything queued there so far: the encoder, and any
    cache it filled lazily, such as position encodings); every tensor in ``data`` (nested dicts /
    lists) is marked as used by the current stream, so that the caching allocator does not hand its
    memory to the side stream while the current one may still read it (``Tensor.record_stream``)."""
    cur = torch.cuda.current_stream(side.device)
    cur.wait_stream(side)
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            if x.is_cuda:
                x.record_stream(cur)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """(host array, logical dtype): bfloat16 travels as its int16 bits (numpy has no bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy(), "bfloat16"
    return t.cpu().numpy(), str(t.dtype).removeprefix("torch.")


def _from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    """A host array from the feature store as a tensor sharing its memory and strides (its layout is the
    encoder's: see :func:`samtrack.io.feature_store.with_memory_order`)."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t
