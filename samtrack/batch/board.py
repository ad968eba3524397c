"""The batch's live table: a rich renderable fed with :class:`VideoEvent` records (it never prints;
the CLI shows it in a ``rich.live.Live``).

With hundreds of videos it shows every running and failed video, the last few finished ones, and
one line of counts with the overall rate and ETA.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from rich.console import Group
from rich.table import Table
from rich.text import Text

from samtrack.batch.records import VideoEvent

RECENT_DONE = 5  # finished videos kept in view


@dataclass
class _Video:
    name: str
    n_frames: int
    state: str = "queued"
    done: int = 0
    total: int = 0
    attempt: int = 0
    worker: str = ""
    note: str = ""
    t_first: float | None = None  # first progress of this attempt (monotonic s) and its frame count
    done_first: int = 0
    fps: float = 0.0
    finished_at: float = 0.0


class BatchBoard:
    """Per-video state (queued / running frame x of n at fps / done / failed) and an overall ETA.
    ``update(event)`` changes fields of a fixed set of videos, so a render from another thread
    (rich's Live refresh) never sees the set change under it."""

    def __init__(self, names_and_frames):
        self.videos = {n: _Video(n, f) for n, f in names_and_frames}
        self.t0 = time.monotonic()
        self.t_started: float | None = None
        self.progressed = 0  # frames passed by every attempt in this run

    def update(self, ev: VideoEvent) -> None:
        """Apply one worker event (queued, running with frame x of n and fps, done, failed) to its row."""
        v = self.videos.get(ev.name)
        if v is None:
            return
        now = time.monotonic()
        if ev.kind == "start":
            self.t_started = self.t_started or now
            v.state, v.attempt, v.worker, v.done, v.total = "running", ev.attempt, ev.worker, 0, ev.total
            v.t_first, v.fps = None, 0.0
            if ev.job and ev.job.resumed:
                v.note = f"resumed at {ev.job.frames_done}/{ev.job.n_frames}"
        elif ev.kind == "progress":
            self.progressed += max(0, ev.done - v.done)
            v.done, v.total = ev.done, ev.total
            if v.t_first is None:
                v.t_first, v.done_first = now, ev.done
            elif now > v.t_first:
                v.fps = (ev.done - v.done_first) / (now - v.t_first)
        elif ev.kind == "retry":
            v.state, v.note = "retrying", ev.error
        elif ev.kind in ("done", "failed", "skipped", "queued"):
            v.state = {"skipped": "done"}.get(ev.kind, ev.kind)
            v.finished_at = now
            if ev.kind == "skipped":
                v.note = "finished before"
            elif ev.kind == "failed":
                v.note = ev.error
            elif ev.kind == "done" and ev.summary is not None:
                s = ev.summary
                v.note = f"{s.objects} object(s), {s.frames_computed} frames computed, {s.fps:.1f} fps" + \
                    (f", {s.attempts} attempts" if s.attempts > 1 else "")

    def counts(self) -> dict[str, int]:
        """Videos per state: queued, running, retrying, done, failed."""
        out = {k: 0 for k in ("queued", "running", "retrying", "done", "failed")}
        for v in self.videos.values():
            out[v.state] = out.get(v.state, 0) + 1
        return out

    def eta_seconds(self) -> float | None:
        """Seconds left at this run's overall rate (frames per second over all workers); None before any rate."""
        if not self.t_started or not self.progressed:
            return None
        rate = self.progressed / max(1e-6, time.monotonic() - self.t_started)
        left = sum(max(0, v.total - v.done) if v.state == "running" else v.n_frames
                   for v in self.videos.values() if v.state in ("running", "queued", "retrying"))
        return left / rate

    def __rich__(self):
        t = Table(box=None, pad_edge=False, expand=False)
        for col in ("video", "state", "frame", "fps", "worker / note"):
            t.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60 if col == "worker / note" else None)
        shown = [v for v in self.videos.values() if v.state in ("running", "retrying")]
        shown += [v for v in self.videos.values() if v.state == "failed"]
        shown += sorted((v for v in self.videos.values() if v.state == "done"), key=lambda v: -v.finished_at)[
            :RECENT_DONE]
        style = {"running": "cyan", "retrying": "yellow", "failed": "red", "done": "green"}
        for v in shown:
            frame = f"{v.done} of {v.total}" if v.state in ("running", "retrying") else ""
            fps = f"{v.fps:.1f}" if v.state == "running" and v.fps else ""
            note = v.worker if v.state == "running" and not v.note else (v.note or v.worker)
            t.add_row(v.name, Text(v.state, style=style.get(v.state, "")), frame, fps, note)
        c = self.counts()
        eta = self.eta_seconds()
        line = (f"queued {c['queued']} · running {c['running'] + c['retrying']} · done {c['done']} · "
                f"failed {c['failed']} · elapsed {_hms(time.monotonic() - self.t0)}"
                + (f" · ETA {_hms(eta)}" if eta is not None else ""))
        return Group(t, Text(line, style="bold"))


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def shown(console, names_and_frames) -> Iterator[Callable[[VideoEvent], None]]:
    """For the CLI: yield a ``progress(event)`` callback that keeps a live :class:`BatchBoard` on
    ``console`` (a terminal), or prints one line per finished, failed or retried video (a log file)."""
    from rich.live import Live
    from rich.markup import escape

    board = BatchBoard(names_and_frames)
    if console.is_terminal:
        with Live(board, console=console, refresh_per_second=4, transient=False):
            yield board.update
        return

    def update(ev: VideoEvent) -> None:
        """The callback handed to the executor: update the board, log finished videos."""
        board.update(ev)
        v = board.videos.get(ev.name)
        if v is not None and ev.kind in ("done", "failed", "retry"):
            c = board.counts()
            console.print(escape(f"{ev.name}: {ev.kind}" + (f" ({v.note})" if v.note else "") +
                                 f"  [{c['done'] + c['failed']} of {len(board.videos)} finished]"), highlight=False,
                          soft_wrap=True)

    yield update
