"""The local executor: a pool of worker processes on this machine, each loading its model once.

Each worker is a ``multiprocessing`` process (spawned: no forked torch or CUDA state) with its own
pipe to the parent, so a worker that dies (killed, out of memory) corrupts nothing but its own pipe.
The parent hands one video at a time to an idle worker, waits on every pipe and every process at
once (:func:`multiprocessing.connection.wait`), and when a worker dies with a video, starts a new
worker on the same device and gives the video to the next idle worker: it resumes from the last
frame the dead one completed (the job folder is the state), up to ``retries`` times.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Callable

from samtrack.batch.records import VideoEvent, VideoJob, VideoSummary
from samtrack.errors import InvalidOptionError, SamtrackError

log = logging.getLogger(__name__)
STOP = None  # what the parent sends a worker to end it
MAX_EARLY_DEATHS = 3  # workers dying before they are ready, in a row: the pool cannot start


class WorkerStartError(SamtrackError, RuntimeError):
    """Worker processes die before they can take a video (a broken installation, no memory)."""


def _interrupt(signum, frame) -> None:
    """A worker's SIGINT / SIGTERM: KeyboardInterrupt the first time, ignored after."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _worker_main(conn, wid: int, device: str, threads: int | None) -> None:
    """A worker process: receive a job, track it (events go back through ``conn``), repeat until STOP."""
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s worker {wid}: %(message)s")
    # SIGINT is how the parent stops a busy worker (its session closed, its frames saved): a batch
    # started in the background of a script (`&`, nohup, a cluster job) hands its children SIGINT
    # ignored, and such a worker ran on until terminated without closing its session
    # SIGTERM likewise (a cluster's time limit or scancel signals every process of the job; its default
    # ends the worker at once with its session not closed). Once: the batch's own SIGINT, or a second
    # signal, must not cut short the close the first one started (kill ends a worker that hangs)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:  # from here on: a signal during start-up, or while "ready" is sent, ends the worker quietly too
        if threads:
            import torch

            torch.set_num_threads(threads)
        from samtrack.batch.worker import ModelCache, run_job

        models = ModelCache(device)
        conn.send(("ready", os.getpid()))
        while True:
            msg = conn.recv()
            if msg is STOP:
                return
            job, attempt = msg
            summary = run_job(job, models, lambda ev: conn.send(("event", ev)), attempt=attempt,
                              worker=f"local-{wid} ({device})")
            conn.send(("result", summary))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # Ctrl-C (the session closed, its frames saved), or the
        return  # parent is gone: end quietly


def _resolve_models(jobs: list[VideoJob]) -> list[VideoJob]:
    """Jobs naming their model and checkpoint file: a missing checkpoint is found or downloaded once,
    here, rather than by every worker at the same time."""
    from samtrack.session import resolve_checkpoint
    from samtrack.session.checkpoints import resolve_model

    cache: dict = {}
    out = []
    for j in jobs:
        k = (j.model, j.checkpoint)
        if k not in cache:
            spec = resolve_model(*k)
            ck = resolve_checkpoint(spec, j.checkpoint)
            cache[k] = (spec.name, "untrained" if ck is None else str(ck))
        out.append(dataclasses.replace(j, model=cache[k][0], checkpoint=cache[k][1]))
    return out


@dataclass
class _Worker:
    wid: int
    device: str
    proc: mp.process.BaseProcess
    conn: object
    job: VideoJob | None = None
    ready: bool = False


class LocalExecutor:
    """Run jobs on ``workers`` processes of this machine (default: one per device), spread over
    ``devices`` (``["cuda:0", "cuda:1"]``; default ``["auto"]``: the first GPU, else the CPU) in
    turn. ``retries``: how many times a video whose worker died is given to another worker.
    ``threads``: torch threads per CPU worker (default: this machine's cores shared among them)."""

    name = "local"

    def __init__(self, *, workers: int | None = None, devices=None, retries: int = 2, threads: int | None = None):
        self.devices = [d.strip() for d in (devices or ["auto"]) if str(d).strip()]
        if workers is not None and workers < 1:
            raise InvalidOptionError(f"--workers {workers}: give 1 or more")
        if retries < 0:
            raise InvalidOptionError(f"retries={retries}: give 0 or more")
        self.workers = workers or len(self.devices)
        self.retries = retries
        self.threads = threads
        self.started = 0  # worker processes started (replacements included)
        self._early_deaths = 0

    def check(self) -> None:
        """Every device exists here (an :class:`InvalidOptionError` naming what this machine has)."""
        import torch

        from samtrack.session.devices import pick_device

        for d in self.devices:
            try:
                pick_device(d)
            except InvalidOptionError as e:
                n = torch.cuda.device_count() if torch.cuda.is_available() else 0
                have = ["auto", "cpu"] + [f"cuda:{i}" for i in range(n)]
                raise InvalidOptionError(f"--devices: {d} is not a device of this machine; use "
                                         f"{', '.join(have)}") from e

    def run(self, jobs: list[VideoJob], emit: Callable[[VideoEvent], None]) -> dict[str, VideoSummary]:
        """Track ``jobs`` (sorted by model so that each worker loads each model once); ``emit`` gets
        every worker's events in the calling thread. Returns name -> summary."""
        self.check()
        jobs = _resolve_models(jobs)
        ctx = mp.get_context("spawn")
        n = min(self.workers, len(jobs))
        cpu_workers = sum(1 for i in range(n) if self._device(i) in ("cpu", "auto"))
        threads = self.threads or max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
        queue = collections.deque(sorted(jobs, key=lambda j: (str(j.model_key), j.row)))
        attempts: collections.Counter = collections.Counter()
        results: dict[str, VideoSummary] = {}
        pool = [self._start(ctx, i, threads) for i in range(n)]
        try:
            while queue or any(w.job for w in pool):
                for w in pool:
                    if w.ready and w.job is None and queue:
                        w.job = queue.popleft()
                        attempts[w.job.name] += 1
                        w.conn.send((w.job, attempts[w.job.name]))
                for obj in wait([w.conn for w in pool] + [w.proc.sentinel for w in pool], timeout=1.0):
                    w = next((w for w in pool if obj in (w.conn, w.proc.sentinel)), None)
                    if w is None:  # its worker was replaced a moment ago
                        continue
                    if not self._drain(w, emit, results) or not w.proc.is_alive():
                        pool[pool.index(w)] = self._replace(ctx, w, threads, queue, attempts, emit, results)
        finally:
            self._stop(pool)
        return results

    def _device(self, i: int) -> str:
        return self.devices[i % len(self.devices)]

    def _start(self, ctx, wid: int, threads: int) -> _Worker:
        parent, child = ctx.Pipe()
        dev = self._device(wid)
        proc = ctx.Process(target=_worker_main, args=(child, wid, dev, threads if dev in ("cpu", "auto") else None),
                           name=f"samtrack-batch-{wid}", daemon=True)
        proc.start()
        child.close()
        self.started += 1
        return _Worker(wid, dev, proc, parent)

    def _drain(self, w: _Worker, emit, results) -> bool:
        """Handle every message waiting on ``w``'s pipe; False when the pipe is closed (the worker died)."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "ready":
                    w.ready, self._early_deaths = True, 0
                elif kind == "event":
                    emit(payload)
                elif kind == "result":
                    results[payload.name] = payload
                    emit(VideoEvent(payload.name, payload.status, summary=payload, attempt=payload.attempts,
                                    error=payload.error))
                    w.job = None
        except (EOFError, OSError):
            return False
        return True

    def _replace(self, ctx, w: _Worker, threads, queue, attempts, emit, results) -> _Worker:
        """``w`` died: its video goes back to the front of the queue (or fails after ``retries``);
        a new worker takes its place on the same device."""
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        w.conn.close()
        if w.job is not None:
            job, tried = w.job, attempts[w.job.name]
            if tried <= self.retries:
                log.warning("worker %d (pid %s) %s while tracking %s; resuming it (attempt %d of %d)", w.wid,
                            w.proc.pid, how, job.name, tried + 1, self.retries + 1)
                emit(VideoEvent(job.name, "retry", attempt=tried, error=f"worker {how}"))
                queue.appendleft(job)
            else:
                from samtrack.batch.worker import failed_summary

                s = failed_summary(job, f"the worker process {how} on each of {tried} attempts (out of memory? "
                                        "see the system log); the job folder keeps the frames done", attempts=tried,
                                   device=w.device)
                results[job.name] = s
                emit(VideoEvent(job.name, "failed", summary=s, attempt=tried, error=s.error))
        elif not w.ready:
            self._early_deaths += 1
            if self._early_deaths >= MAX_EARLY_DEATHS:
                raise WorkerStartError(f"{self._early_deaths} worker processes in a row {how} before they were ready "
                                       "(see the lines above); check the installation with `samtrack track` on one "
                                       "video, or use fewer --workers")
        return self._start(ctx, w.wid, threads)

    def _stop(self, pool: list[_Worker]) -> None:
        """End every worker: idle ones at STOP; busy ones (Ctrl-C, an error) close their session on SIGINT,
        which a terminal's Ctrl-C has usually sent them already (the frames they finished are kept)."""
        for w in pool:
            try:
                w.conn.send(STOP)
            except (OSError, ValueError):
                pass
        for w in pool:
            w.proc.join(timeout=5 if w.job is not None else 10)
        for w in pool:
            if w.proc.is_alive() and w.job is not None and w.proc.pid:
                os.kill(w.proc.pid, signal.SIGINT)
        for w in pool:
            w.proc.join(timeout=30)
            if w.proc.is_alive():
                w.proc.terminate()  # SIGTERM: a worker closes its session on it, as on SIGINT
                w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=10)
            w.conn.close()
