"""The records that cross process and node boundaries in a batch: small, picklable, plain data.

A :class:`VideoJob` goes to a worker; :class:`VideoEvent` records come back while it works
(progress callbacks, at most a few per second); one :class:`VideoSummary` comes back at the end.
Masks never travel: they are written to the job folder (shared storage on a cluster).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoJob:
    """One row of a manifest, validated, with absolute paths: everything a worker needs.

    ``out_dir``: the video's job folder (``DIR/<name>``); ``n_frames``: the video's frame count
    found at validation; ``text``: object-creating text prompts on ``text_frame`` (SAM3);
    ``exports``: formats written into ``out_dir`` after tracking; ``key``: what the job was
    computed from (inputs and options; a finished job with the same key is not run again); ``features``:
    encode every frame first and keep the image features in ``out_dir`` (later corrections in that
    folder encode nothing; results are the same either way, so it is not part of ``key``)."""

    name: str
    row: int
    video: str
    prompts: str | None
    out_dir: str
    n_frames: int
    model: str | None = None
    checkpoint: str | None = None
    image_size: int | None = None
    direction: str = "both"
    exports: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    text_frame: int = 0
    key: str = ""
    features: bool = False  # precompute image features before tracking (kept in out_dir; not in ``key``)

    @property
    def model_key(self) -> tuple:
        """Jobs with equal keys share a loaded model."""
        return (self.model, self.checkpoint, self.image_size)


@dataclass(frozen=True)
class JobProgress:
    """What an attempt found in the job folder when it started (from :class:`samtrack.job.JobStart`).

    ``frames_done``: frames finished before this attempt (a resumed job: its last completed frames);
    ``to_compute``: frames this attempt computes; ``first_frame``: the first of them (None: nothing)."""

    resumed: bool
    n_frames: int
    frames_done: int
    to_compute: int
    first_frame: int | None
    progress_total: int


@dataclass(frozen=True)
class VideoEvent:
    """A worker's news about one video, in order: ``start`` (per attempt, with ``job`` and the
    worker's ``pid``), ``progress`` (``done`` of ``total`` frames of this attempt), then ``done`` or
    ``failed`` (with ``summary``). The batch itself adds ``queued``, ``retry`` (the worker died;
    ``error`` says how) and ``skipped`` (finished in an earlier run)."""

    name: str
    kind: str
    done: int = 0
    total: int = 0
    attempt: int = 1
    worker: str = ""
    pid: int | None = None
    job: JobProgress | None = None
    summary: VideoSummary | None = None
    error: str = ""


@dataclass(frozen=True)
class VideoSummary:
    """One line of the batch report.

    ``status``: "done", "failed", "interrupted" or "not run"; ``finished_before``: done in an earlier run, nothing
    run now; ``frames``: the video's frames; ``frames_computed``: frames the model computed in this run
    (all attempts); ``seconds``: wall time of this run's attempts (s); ``fps``: frames_computed / seconds;
    ``peak_rss_bytes``: the worker process's peak resident memory while tracking (bytes, sampled per
    frame); ``peak_gpu_bytes``: peak CUDA memory allocated (bytes; 0 on the CPU); ``model_calls``:
    image encodings, tracking steps, prompts and memory encodings run for it; ``attempts``: workers
    it took (more than 1: a worker died and the next resumed); ``resumed_from``: frames already done
    when the last attempt started; ``error``: why it failed (one line)."""

    name: str
    video: str
    out_dir: str
    status: str
    frames: int = 0
    frames_computed: int = 0
    objects: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int = 0
    model_calls: int = 0
    attempts: int = 0
    resumed_from: int = 0
    finished_before: bool = False
    device: str = ""
    exports: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str = ""
    detail: str = field(default="", repr=False)  # traceback of an unexpected error (report JSON only)

    def to_dict(self) -> dict:
        """JSON-able dict (tuples as lists) for the batch report."""
        d = dataclasses.asdict(self)
        d["exports"], d["warnings"] = list(self.exports), list(self.warnings)
        return d

    def replace(self, **changes) -> VideoSummary:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
