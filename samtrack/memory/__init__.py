"""Per-object, per-frame tracking memory in three tiers (device, host, disk).

Knows tensors, not prompts or models; never imports napari or Qt.
"""
from samtrack.memory.bank import MemoryBank

__all__ = ["MemoryBank"]
