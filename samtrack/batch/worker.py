"""One video of a batch, tracked inside whatever worker runs it (a local process, a Ray task or actor).

The job folder is the only state: :func:`samtrack.job.start_track` opens or resumes it, tracking
writes results behind it, and a finished job leaves ``batch.json`` (what it was computed from, and
its summary) so that running the batch again skips it without loading a model.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from samtrack.batch.records import JobProgress, VideoEvent, VideoJob, VideoSummary
from samtrack.errors import CacheError, JobMismatchError, SamtrackError, SessionInUseError
from samtrack.io.folder_lock import in_use_message

log = logging.getLogger(__name__)
MARKER = "batch.json"
PROGRESS_EVERY_S = 0.25  # progress events per video: at most 4 a second (plus the last)

Emit = Callable[[VideoEvent], None]


class ModelCache:
    """The model a worker keeps loaded between videos: the last one asked for. Jobs reach a worker
    sorted by model, so each worker loads each model once. ``loads``: models built so far."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self.loads = 0
        self._key: tuple | None = None
        self._backend = None

    def get(self, job: VideoJob):
        """The backend for ``job`` (its model, checkpoint and image size), loaded if not already."""
        from samtrack.session import load_model

        if job.model_key != self._key or self._backend is None:
            self._backend, self._key = None, None
            gc.collect()  # the previous model's memory goes before the next one is built
            self._backend = load_model(job.model, checkpoint=job.checkpoint, image_size=job.image_size,
                                       device=self.device)
            self._key = job.model_key
            self.loads += 1
        return self._backend


def model_calls(backend) -> int:
    """Every model call a backend made so far (image encodings, tracking steps, prompts, memory encodings)."""
    return int(sum(sum(c.values()) for c in getattr(backend, "calls", {}).values()))


class _Progress:
    """The session's ``progress(done, total)`` callback: throttled events and peak RSS."""

    def __init__(self, emit: Emit, name: str, attempt: int):
        import psutil

        self.emit, self.name, self.attempt = emit, name, attempt
        self.proc = psutil.Process()
        self.peak_rss = self.proc.memory_info().rss
        self.last = 0.0
        self.done = self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        self.done, self.total = done, total
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or done >= total:
            self.last = now
            self.emit(VideoEvent(self.name, "progress", done=done, total=total, attempt=self.attempt))


def finished_summary(job: VideoJob) -> VideoSummary | None:
    """The summary a finished job left in its folder, when it was computed from what ``job`` asks
    for (same video file, prompt file content, model, options); else None."""
    p = Path(job.out_dir) / MARKER
    if not p.is_file() or not (Path(job.out_dir) / "results.zarr").exists():
        return None
    try:
        rec = json.loads(p.read_text())
        if rec.get("key") != job.key:
            return None
        s = VideoSummary(**{**rec["summary"], "exports": tuple(rec["summary"].get("exports", ())),
                            "warnings": tuple(rec["summary"].get("warnings", ()))})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return s.replace(finished_before=True, frames_computed=0, model_calls=0, attempts=0, seconds=0.0, fps=0.0)


def _write_marker(job: VideoJob, summary: VideoSummary) -> None:
    p = Path(job.out_dir) / MARKER
    tmp = p.with_name(f".{MARKER}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": job.key, "summary": summary.to_dict()}, indent=1))
    os.replace(tmp, p)


def track_video(job: VideoJob, backend, emit: Emit, *, attempt: int = 1, worker: str = "") -> VideoSummary:
    """Open or resume ``job``'s folder, track what is left, write its exports; returns its summary.

    ``emit`` receives a ``start`` event (with the worker's pid and what the folder held) and
    throttled ``progress`` events. Raises what :func:`samtrack.job.start_track`, tracking or an
    export raise (a :class:`SamtrackError` for a bad input or job folder)."""
    import torch

    from samtrack.job import start_track

    t0 = time.perf_counter()
    calls0 = model_calls(backend)
    cuda = getattr(backend, "device", None) is not None and backend.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(backend.device)
    finds = [{"frame": job.text_frame, "text": t} for t in job.text]
    session, start = start_track(job.video, job.prompts, job.out_dir, direction=job.direction, finds=finds,
                                 backend=backend)
    try:
        jp = JobProgress(start.resumed, start.n_frames, start.frames_done, start.to_compute, start.first_frame,
                         start.progress_total)
        emit(VideoEvent(job.name, "start", total=start.progress_total, attempt=attempt, worker=worker,
                        pid=os.getpid(), job=jp))
        progress = _Progress(emit, job.name, attempt)
        if job.features and session.features is not None:
            session.precompute_features()  # frames already in the folder's feature store are skipped
        t_track = time.perf_counter()
        if start.to_compute:
            for _ in session.propagate(job.direction, progress=progress):
                pass
        t_track = time.perf_counter() - t_track
        warnings = []
        for fmt in job.exports:
            from samtrack.io.export import default_name, export

            rep = export(session.results, fmt, Path(job.out_dir) / default_name(fmt), force=True,
                         frames=session.frames)
            warnings += [f"{fmt}: {w}" for w in rep.warnings]
        objects = len(session.obj_ids)
    finally:
        session.close()
    seconds = time.perf_counter() - t0
    summary = VideoSummary(
        name=job.name, video=job.video, out_dir=job.out_dir, status="done", frames=start.n_frames,
        frames_computed=start.to_compute, objects=objects, seconds=round(seconds, 3),
        fps=round(start.to_compute / t_track, 3) if start.to_compute and t_track > 0 else 0.0,
        peak_rss_bytes=int(progress.peak_rss), model_calls=model_calls(backend) - calls0,
        peak_gpu_bytes=int(torch.cuda.max_memory_allocated(backend.device)) if cuda else 0,
        attempts=attempt, resumed_from=start.frames_done if start.resumed else 0, device=str(backend.device),
        exports=tuple(job.exports), warnings=tuple(warnings))
    _write_marker(job, summary)
    return summary


def _check_folder(job: VideoJob) -> None:
    """A job folder that exists must be a samtrack job's (never write into someone else's folder)."""
    from samtrack.job import OURS

    out = Path(job.out_dir)
    if out.is_dir() and any(out.iterdir()) and not {p.name for p in out.iterdir()} & OURS:
        raise CacheError(f"{out} exists and is not a samtrack job folder: give this row another `name`, or move "
                         "that folder away")


def failed_summary(job: VideoJob, error: str, *, detail: str = "", attempts: int = 1, device: str = "") -> VideoSummary:
    """The report line of a video that failed with ``error`` (one readable line)."""
    return VideoSummary(name=job.name, video=job.video, out_dir=job.out_dir, status="failed", frames=job.n_frames,
                        attempts=attempts, device=device, error=error, detail=detail)


def run_job(job: VideoJob, models: ModelCache, emit: Emit, *, attempt: int = 1, worker: str = "") -> VideoSummary:
    """:func:`track_video` with the worker's model; an error becomes a failed summary (a
    :class:`SamtrackError` in its own words; anything else with its type and a traceback in
    ``detail``), so one video's failure never stops the worker. KeyboardInterrupt propagates."""
    try:
        _check_folder(job)
        backend = models.get(job)
        return track_video(job, backend, emit, attempt=attempt, worker=worker)
    except JobMismatchError as e:
        what = ", ".join(e.differences) or "its job"
        msg = (f"{job.out_dir} holds another job's results (they differ in: {what}): give this row another `name`, "
               "or delete that folder to track the video again")
        return failed_summary(job, msg, attempts=attempt, device=models.device)
    except SessionInUseError as e:  # the job folder is open elsewhere (a track, a viewer, another batch)
        msg = in_use_message(job.out_dir, e.holder, advice="run this row again once it is closed (the batch "
                             "resumes it), or give this row another `name`")
        return failed_summary(job, msg, attempts=attempt, device=models.device)
    except SamtrackError as e:
        log.info("%s failed: %s", job.name, e)
        return failed_summary(job, str(e), attempts=attempt, device=models.device)
    except Exception as e:  # a bug or an environment problem: keep the traceback for the report
        log.warning("%s failed: %s: %s", job.name, type(e).__name__, e)
        return failed_summary(job, f"{type(e).__name__}: {e}", detail=traceback.format_exc(), attempts=attempt,
                              device=models.device)
