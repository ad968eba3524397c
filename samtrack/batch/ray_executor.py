"""The Ray executor: the same jobs on a Ray cluster (``pip install 'samtrack[ray]'``).

The only module of samtrack that imports Ray, and only when a batch runs on it. Two modes:

- ``tasks`` (default): one Ray task per video with its GPU request (``num_gpus``) and
  ``max_retries``; a task whose worker dies is retried by Ray and resumes from the video's job
  folder. Each task loads its model (seconds): right for videos that take minutes.
- ``actors``: one long-lived actor per GPU (or per ``workers``) keeps its model loaded and tracks
  videos one after another: right for many short clips, where loading would dominate. A dead actor
  is killed for good and replaced by a new one; its video goes back to the queue and resumes from
  its folder (this loop does it itself: no Ray Data, no ``ActorPool``).

Workers send small :class:`VideoEvent` records through a :class:`ray.util.queue.Queue` and return a
small :class:`VideoSummary`; masks go to the job folders, which must be on storage every node sees.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
from typing import Callable

from samtrack.batch.records import VideoEvent, VideoJob, VideoSummary
from samtrack.errors import InvalidOptionError, SamtrackError

log = logging.getLogger(__name__)
WAIT_S = 0.5  # how often the driver looks at finished work and progress (s)


class RayNotInstalledError(SamtrackError, ImportError):
    """``--executor ray`` without Ray installed."""


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalledError("the Ray executor needs Ray: pip install 'samtrack[ray]' (or use --executor "
                                   "local)") from e
    return ray


class _Emitter:
    """A worker's ``emit``: events into the driver's queue (lost, not fatal, if the driver is gone)."""

    def __init__(self, queue):
        self.queue = queue

    def __call__(self, ev: VideoEvent) -> None:
        try:
            self.queue.put_nowait(ev)
        except Exception:  # the driver went away: the job folder still records everything
            pass


def _worker_label(device: str) -> str:
    import socket

    return f"ray {socket.gethostname()} pid {os.getpid()} ({device})"


def _setup_worker(cpus: float) -> str:
    import ray
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return "cuda" if ray.get_gpu_ids() else "cpu"


def _track_task(job: VideoJob, queue, cpus: float) -> VideoSummary:
    """One video as a Ray task (retried by Ray when its worker dies; it resumes from the job folder)."""
    from samtrack.batch.worker import ModelCache, run_job

    device = _setup_worker(cpus)
    return run_job(job, ModelCache(device), _Emitter(queue), worker=_worker_label(device))


class _Tracker:
    """A Ray actor that keeps its model loaded and tracks one video per call."""

    def __init__(self, cpus: float):
        from samtrack.batch.worker import ModelCache

        self.device = _setup_worker(cpus)
        self.models = ModelCache(self.device)

    def track(self, job: VideoJob, attempt: int, queue) -> VideoSummary:
        """Track one video with the actor's loaded model; progress events go to ``queue`` (a Ray queue)."""
        from samtrack.batch.worker import run_job

        return run_job(job, self.models, _Emitter(queue), attempt=attempt, worker=_worker_label(self.device))


class RayExecutor:
    """Run jobs on Ray. ``address``: a running cluster (``ray start --head`` prints it; "auto" finds
    the local one); None: the cluster this process is already connected to, else a local one
    started for the run on 127.0.0.1 (no dashboard, no usage stats) and stopped after it.
    ``mode``: "tasks" or "actors" (see the module). ``gpus_per_video``: GPUs each task or actor
    asks for (fractions share a GPU; default 1 when the cluster has GPUs, else 0: CPUs only);
    ``cpus_per_video``: CPUs each asks for (also its torch threads); ``workers``: actors to start
    (default: one per GPU, or per ``cpus_per_video`` CPUs); ``retries``: how many times a video
    whose worker died is run again (Ray's ``max_retries`` for tasks).

    Raises :class:`RayNotInstalledError` without Ray, :class:`InvalidOptionError` for a request
    the cluster cannot meet."""

    name = "ray"

    def __init__(self, *, address: str | None = None, mode: str = "tasks", gpus_per_video: float | None = None,
                 cpus_per_video: float = 1.0, workers: int | None = None, retries: int = 2):
        if mode not in ("tasks", "actors"):
            raise InvalidOptionError(f"--ray-mode {mode}: use tasks or actors")
        if gpus_per_video is not None and gpus_per_video < 0 or cpus_per_video <= 0:
            raise InvalidOptionError("GPUs per video must be 0 or more, CPUs per video more than 0")
        if workers is not None and workers < 1:
            raise InvalidOptionError(f"--workers {workers}: give 1 or more")
        self.address, self.mode, self.workers, self.retries = address, mode, workers, retries
        self.gpus, self.cpus = gpus_per_video, cpus_per_video
        self.started = 0  # actors started (replacements included); tasks: 0

    # -- cluster ---------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect to (or start) a cluster; True when this call owns the connection."""
        if "ray" not in sys.modules and self.address is None:
            # a cluster for this run only: its servers bind to 127.0.0.1 (loopback node IP), nothing phones home
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray = _ray()
        if ray.is_initialized():
            return False
        opts = dict(log_to_driver=False, logging_level=logging.WARNING)
        if self.address is None:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **opts)
        else:
            ray.init(address=self.address, **opts)
        return True

    def _resources(self, n_jobs: int) -> tuple[float, int]:
        ray = _ray()
        have = ray.cluster_resources()
        gpus = self.gpus if self.gpus is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
        if gpus > have.get("GPU", 0):
            raise InvalidOptionError(f"each video asks for {gpus:g} GPU(s) but the Ray cluster has "
                                     f"{have.get('GPU', 0):g}: lower --gpus-per-video (0 tracks on CPUs)")
        if self.cpus > have.get("CPU", 0):
            raise InvalidOptionError(f"each video asks for {self.cpus:g} CPU(s) but the Ray cluster has "
                                     f"{have.get('CPU', 0):g}: lower --cpus-per-video")
        slots = int(have["GPU"] // gpus) if gpus else int(have.get("CPU", 1) // self.cpus)
        return gpus, max(1, min(self.workers or slots, n_jobs))

    # -- running ---------------------------------------------------------------------------------
    def run(self, jobs: list[VideoJob], emit: Callable[[VideoEvent], None]) -> dict[str, VideoSummary]:
        """Track ``jobs`` on the cluster; ``emit`` gets every worker's events in the calling thread.
        Returns name -> summary."""
        owned = self._connect()
        ray = _ray()
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        try:
            gpus, n_actors = self._resources(len(jobs))
            events = _Events(queue, emit)
            if self.mode == "tasks":
                return self._run_tasks(jobs, gpus, events)
            return self._run_actors(jobs, gpus, n_actors, events)
        finally:
            try:
                queue.shutdown()
            except Exception:  # the queue's actor is already gone
                pass
            if owned:
                ray.shutdown()

    def _run_tasks(self, jobs, gpus: float, events: _Events) -> dict[str, VideoSummary]:
        ray = _ray()
        fn = ray.remote(_track_task).options(num_cpus=self.cpus, num_gpus=gpus, max_retries=self.retries,
                                             retry_exceptions=False)
        refs = {fn.remote(j, events.queue, self.cpus): j for j in sorted(jobs, key=lambda j: j.row)}
        results: dict[str, VideoSummary] = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=WAIT_S, fetch_local=False)
            events.drain()
            for ref in ready:
                job = refs.pop(ref)
                tries = max(1, events.starts[job.name])
                try:
                    s = ray.get(ref)
                except ray.exceptions.RayError as e:
                    from samtrack.batch.worker import failed_summary

                    s = failed_summary(job, f"the Ray worker died on each of {tries} attempt(s) "
                                            f"({type(e).__name__}); the job folder keeps the frames done",
                                       attempts=tries)
                results[job.name] = events.finish(s.replace(attempts=tries))
        return results

    def _run_actors(self, jobs, gpus: float, n: int, events: _Events) -> dict[str, VideoSummary]:
        ray = _ray()
        actor_cls = ray.remote(_Tracker).options(num_cpus=self.cpus, num_gpus=gpus, max_restarts=0,
                                                 max_task_retries=0)
        queue = collections.deque(sorted(jobs, key=lambda j: (str(j.model_key), j.row)))
        attempts: collections.Counter = collections.Counter()
        idle, busy, results = [], {}, {}
        everyone = []

        def new_actor():
            """Start an actor for a device slot (also to replace a dead one) and remember it for shutdown."""
            a = actor_cls.remote(self.cpus)
            everyone.append(a)
            self.started += 1
            return a

        idle = [new_actor() for _ in range(n)]
        try:
            while queue or busy:
                while idle and queue:
                    a, job = idle.pop(), queue.popleft()
                    attempts[job.name] += 1
                    busy[a.track.remote(job, attempts[job.name], events.queue)] = (a, job)
                ready, _ = ray.wait(list(busy), num_returns=len(busy), timeout=WAIT_S, fetch_local=False)
                events.drain()
                for ref in ready:
                    a, job = busy.pop(ref)
                    try:
                        s = ray.get(ref)
                        idle.append(a)
                    except ray.exceptions.RayActorError as e:
                        ray.kill(a, no_restart=True)
                        idle.append(new_actor())
                        s = self._actor_died(job, attempts[job.name], e, queue, events)
                        if s is None:
                            continue
                    results[job.name] = events.finish(s.replace(attempts=attempts[job.name]))
        finally:
            for a in everyone:  # idle actors keep their GPU share until killed
                ray.kill(a, no_restart=True)
        return results

    def _actor_died(self, job, tried: int, err, queue, events) -> VideoSummary | None:
        """Requeue ``job`` (it resumes from its folder) or, after ``retries``, its failed summary."""
        if tried <= self.retries:
            log.warning("the Ray actor tracking %s died (%s); resuming it on a new actor (attempt %d of %d)",
                        job.name, type(err).__name__, tried + 1, self.retries + 1)
            events.emit(VideoEvent(job.name, "retry", attempt=tried, error=f"actor died ({type(err).__name__})"))
            queue.appendleft(job)
            return None
        from samtrack.batch.worker import failed_summary

        return failed_summary(job, f"the Ray actor died on each of {tried} attempt(s) ({type(err).__name__}); the "
                                   "job folder keeps the frames done", attempts=tried)


class _Events:
    """The driver's side of the progress queue: numbers attempts by the ``start`` events seen (a
    retried task says ``start`` again) and passes events on in order."""

    def __init__(self, queue, emit):
        self.queue, self.emit = queue, emit
        self.starts: collections.Counter = collections.Counter()

    def drain(self) -> None:
        """Forward the progress events queued by workers so far to the board (non-blocking)."""
        n = self.queue.qsize()
        for ev in self.queue.get_nowait_batch(n) if n else ():
            if ev.kind == "start":
                self.starts[ev.name] += 1
                if self.starts[ev.name] > 1 and ev.attempt < self.starts[ev.name]:  # a task retried by Ray
                    self.emit(VideoEvent(ev.name, "retry", attempt=self.starts[ev.name] - 1,
                                         error="the Ray worker died; Ray ran the task again"))
                ev = dataclasses.replace(ev, attempt=max(ev.attempt, self.starts[ev.name]))
            self.emit(ev)

    def finish(self, s: VideoSummary) -> VideoSummary:
        """Report a video's final summary (after its last progress events) and return it."""
        self.drain()
        self.emit(VideoEvent(s.name, s.status, summary=s, attempt=s.attempts, error=s.error))
        return s
