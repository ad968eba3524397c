"""Many videos: ``samtrack batch`` on this machine (a process pool) or on a Ray cluster.

Each manifest row is the resumable ``samtrack track`` job of one video in ``DIR/<name>``; running a
batch again skips finished videos and resumes the others from their last completed frame. Only
:mod:`samtrack.batch.ray_executor` imports Ray, and only when a batch runs on it.
"""
from samtrack.batch.manifest import Manifest, ManifestError, RowDefaults, load_manifest
from samtrack.batch.records import JobProgress, VideoEvent, VideoJob, VideoSummary
from samtrack.batch.report import BatchReport, write_report
from samtrack.batch.runner import EXECUTORS, make_executor, run_batch

__all__ = ["EXECUTORS", "BatchReport", "JobProgress", "Manifest", "ManifestError", "RowDefaults", "VideoEvent",
           "VideoJob", "VideoSummary", "load_manifest", "make_executor", "run_batch", "write_report"]
