"""The background thread that decodes missing chunks of a FrameStore, in the order the store asks."""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("samtrack.io.frame_store")


def lower_thread_priority() -> None:
    """Background cache work yields the CPU to the consumer (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class Builder(threading.Thread):
    """The one thread that decodes and writes shards, in the order the store asks."""

    def __init__(self, store):
        super().__init__(name="samtrack-frame-builder", daemon=True)
        self.store = store

    def run(self) -> None:
        store = self.store
        lower_thread_priority()
        reader = store._reader.reopen()
        try:
            while True:
                k = store._next_chunk()
                if k is None:
                    return
                store._build_chunk(reader, k)
        except BaseException as e:  # never die silently: waiting readers get the error
            log.exception("frame builder stopped")
            store._fatal(e)
        finally:
            reader.close()
