"""The batch report: one :class:`BatchReport`, written as JSON and CSV beside the job folders."""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from samtrack.batch.records import VideoSummary

JSON_NAME, CSV_NAME = "batch-report.json", "batch-report.csv"
CSV_COLUMNS = ("name", "status", "frames", "frames_computed", "objects", "seconds", "fps", "peak_rss_bytes",
               "peak_gpu_bytes", "model_calls", "attempts", "resumed_from", "finished_before", "device", "video",
               "out_dir", "error")


@dataclass(frozen=True)
class BatchReport:
    """What a batch run did. ``videos``: one summary per manifest row, in manifest order (status
    "done", "failed", "interrupted" by Ctrl-C, or "not run" when the executor itself failed);
    ``seconds``: wall time of the run (s); ``workers_started``: worker processes or actors started
    (0: everything was finished before, or Ray tasks); ``interrupted``: stopped by Ctrl-C (the
    videos not finished say "interrupted"; running the batch again resumes them)."""

    out_dir: Path
    executor: str
    videos: tuple[VideoSummary, ...]
    seconds: float
    workers_started: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        """How many videos ended in ``status`` ("done", "failed", "not run")."""
        return sum(v.status == status for v in self.videos)

    @property
    def failed(self) -> list[VideoSummary]:
        """The failed videos, in manifest order."""
        return [v for v in self.videos if v.status == "failed"]

    @property
    def frames_computed(self) -> int:
        """Frames tracked by this run over all videos (0 for a re-run of a finished batch)."""
        return sum(v.frames_computed for v in self.videos)

    def summary_line(self) -> str:
        """e.g. "5 videos: 3 done (1 finished before), 2 failed; 240 frames computed in 31.0 s (7.7 frames/s)"."""
        n, done, before = len(self.videos), self.count("done"), sum(v.finished_before for v in self.videos)
        parts = [f"{done} done" + (f" ({before} finished before)" if before else "")]
        for status in ("failed", "interrupted", "not run"):
            if self.count(status):
                parts.append(f"{self.count(status)} {status}")
        rate = self.frames_computed / self.seconds if self.seconds > 0 else 0.0
        return (f"{n} video{'s' if n != 1 else ''}: {', '.join(parts)}; {self.frames_computed} frames computed in "
                f"{self.seconds:.1f} s ({rate:.1f} frames/s)")

    def to_dict(self) -> dict:
        return {"summary": {"videos": len(self.videos), "done": self.count("done"), "failed": self.count("failed"),
                            "interrupted": self.count("interrupted"),
                            "finished_before": sum(v.finished_before for v in self.videos),
                            "frames_computed": self.frames_computed, "seconds": round(self.seconds, 3),
                            "executor": self.executor, "workers_started": self.workers_started,
                            "line": self.summary_line()},
                "videos": [v.to_dict() for v in self.videos]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: BatchReport) -> tuple[Path, Path]:
    """Write ``batch-report.json`` and ``batch-report.csv`` into the batch's folder; returns their paths."""
    out = Path(report.out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for v in report.videos:
        w.writerow(v.to_dict())
    _write_atomic(out / JSON_NAME, json.dumps(report.to_dict(), indent=1))
    _write_atomic(out / CSV_NAME, buf.getvalue())
    return out / JSON_NAME, out / CSV_NAME
