"""Model-family adapters. Only modules in this package know a model package's internals."""
from samtrack.session.backends.base import Backend, FrameFeatures, MemoryEntry, StepOutput, TrackRequest

__all__ = ["Backend", "FrameFeatures", "MemoryEntry", "StepOutput", "TrackRequest"]
