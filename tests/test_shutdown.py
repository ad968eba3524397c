"""Shutdown never loses work or hangs: close() is idempotent and safe after a failure, and a
background writer's failure is raised, not swallowed."""
from __future__ import annotations

import numpy as np
import pytest

import samtrack
from samtrack.errors import CacheError
from samtrack.io.result_store import Status
from tests import model_utils as mu


@pytest.fixture
def session(tmp_path):
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=128)
    v = np.full((6, 48, 64, 3), 30, np.uint8)
    v[:, 10:30, 10:30] = 220
    return samtrack.open_session(v, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")


def test_close_twice_is_harmless(session):
    session.add_box(0, 1, [10, 10, 30, 30])
    list(session.propagate("forward"))
    session.close()
    session.close()
    assert session.closed


def test_close_after_a_failed_write_raises_it_once_and_releases_everything(session, monkeypatch):
    session.add_box(0, 1, [10, 10, 30, 30])
    list(session.propagate("forward", stop=2))
    session.results.write(3, 1, np.ones((48, 64), bool), status=Status.PROPAGATED, object_score=1.0, iou=1.0,
                          source=0)
    calls = []

    def broken(snap):
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(session.results, "write_snapshot", broken)
    with pytest.raises(OSError, match="disk full"):
        session.close()
    assert calls and session.closed
    frames_closed = session.frames._closed
    session.close()  # nothing left to do, no second error
    assert frames_closed


def test_a_failed_background_flush_is_raised_at_close(session, monkeypatch):
    session.add_box(0, 1, [10, 10, 30, 30])
    from samtrack.session import flusher

    def broken(results, bank):
        raise OSError("no space left")

    monkeypatch.setattr(flusher, "flush_now", broken)
    session._flusher.request()
    with pytest.raises((CacheError, OSError), match="no space left"):
        session.close()


def test_a_closed_session_refuses_work_and_a_running_propagation_stops(session):
    from samtrack.errors import SessionClosedError

    session.add_box(0, 1, [10, 10, 30, 30])
    g = session.propagate("forward")
    first = next(g)
    session.close()
    assert list(g) == []  # the generator stops at its next frame, writing nothing more
    for call in (lambda: session.add_points(0, 1, [[5, 5]], [1]), lambda: list(session.propagate("both")),
                 lambda: session.add_object(3), lambda: session.remove_object(1)):
        with pytest.raises(SessionClosedError, match="closed"):
            call()
    assert first.frame_idx == 0  # the keyframe where the pass starts
