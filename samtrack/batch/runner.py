"""``run_batch``: validate a manifest, skip finished videos, run the rest on an executor, report."""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Callable

from samtrack.batch.manifest import Manifest, RowDefaults, load_manifest
from samtrack.batch.records import VideoEvent, VideoSummary
from samtrack.batch.report import BatchReport, write_report
from samtrack.errors import InvalidOptionError

log = logging.getLogger(__name__)
EXECUTORS = {"local": ("samtrack.batch.local", "LocalExecutor"),  # name -> (module, class), imported when used
             "ray": ("samtrack.batch.ray_executor", "RayExecutor")}


def make_executor(name: str, **options):
    """The executor registered as ``name`` ("local", "ray"), built with ``options`` (see each class).
    Raises :class:`InvalidOptionError` for an unknown name or a bad option."""
    if name not in EXECUTORS:
        raise InvalidOptionError(f"executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name]
    return getattr(importlib.import_module(module), cls)(**options)


class _Clock:
    """Driver-side wall time per video, from its first ``start`` to its end (all attempts)."""

    def __init__(self, emit: Callable[[VideoEvent], None]):
        self.emit, self.first, self.seconds = emit, {}, {}

    def __call__(self, ev: VideoEvent) -> None:
        now = time.perf_counter()
        if ev.kind == "start":
            self.first.setdefault(ev.name, now)
        elif ev.kind in ("done", "failed") and ev.name in self.first:
            self.seconds[ev.name] = now - self.first[ev.name]
        self.emit(ev)

    def fix(self, s: VideoSummary) -> VideoSummary:
        if s.attempts > 1 and s.name in self.seconds:  # a worker's own clock saw only the last attempt
            return s.replace(seconds=round(self.seconds[s.name], 3))
        return s


def run_batch(manifest, out_dir, *, executor: str = "local", defaults: RowDefaults = RowDefaults(), only=(),
              progress: Callable[[VideoEvent], None] | None = None, **executor_options) -> BatchReport:
    """Track every video of ``manifest`` (a path, or a :class:`Manifest` from :func:`load_manifest`)
    into ``out_dir/<name>`` and write ``out_dir/batch-report.json`` and ``.csv``.

    A video finished by an earlier run with the same inputs is skipped without loading a model; an
    unfinished one resumes from its last completed frame; a video that fails (damaged file, a job
    folder holding another job, an error while tracking) is reported with its reason and the others
    go on. ``executor``: "local" or "ray", built with ``executor_options`` (:class:`LocalExecutor`:
    workers, devices, retries; :class:`RayExecutor`: address, mode, gpus_per_video, cpus_per_video,
    workers, retries). ``only``: names of the rows to run. ``progress``: called with every
    :class:`VideoEvent` in the calling thread (the CLI draws its table from them).

    The local executor spawns worker processes: from a script, call this under
    ``if __name__ == "__main__":`` (as with any ``multiprocessing`` pool).

    Returns the :class:`BatchReport` (also after Ctrl-C, which is re-raised once the report is written).
    Raises :class:`ManifestError` (nothing run) and :class:`InvalidOptionError`."""
    from samtrack.batch.worker import failed_summary, finished_summary

    out_dir = Path(out_dir)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, out_dir, defaults=defaults)
    if only:
        m = m.select(only)
    ex = make_executor(executor, **executor_options)
    if hasattr(ex, "check"):  # e.g. the local devices exist: a mistake before any work or report
        ex.check()
    emit = _Clock(progress or (lambda ev: None))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, VideoSummary] = {}
    todo = []
    for job in m.jobs:
        if job.name in m.damaged:
            results[job.name] = failed_summary(job, m.damaged[job.name], attempts=0)
            emit(VideoEvent(job.name, "failed", summary=results[job.name], error=m.damaged[job.name]))
        elif (s := finished_summary(job)) is not None:
            results[job.name] = s
            emit(VideoEvent(job.name, "skipped", summary=s))
        else:
            todo.append(job)
            emit(VideoEvent(job.name, "queued", total=job.n_frames))
    t0, interrupted = time.perf_counter(), False
    try:
        if todo:
            log.info("%d of %d videos to track on %s", len(todo), len(m.jobs), executor)
            results.update(ex.run(todo, emit))
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:  # also after Ctrl-C or an executor's error: what finished is reported, the rest says why not
        missing = "interrupted" if interrupted else "not run"
        videos = tuple(emit.fix(results[j.name]) if j.name in results else
                       VideoSummary(j.name, j.video, j.out_dir, missing, frames=j.n_frames) for j in m.jobs)
        report = BatchReport(out_dir, executor, videos, time.perf_counter() - t0, getattr(ex, "started", 0),
                             interrupted)
        write_report(report)
    return report
