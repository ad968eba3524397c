"""Attacks on the image feature store (issue 12): a damaged, truncated or half-deleted store is never
served (a frame whose features cannot be read back exactly is encoded again), and what cannot be
opened is rebuilt rather than failing the session."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

import samtrack.io.feature_store as fsm
from samtrack.io.feature_store import FeatureStore

N = 6


def _row(f: int) -> dict[str, np.ndarray]:
    return {"a": np.full((64,), f + 1, np.float32)}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A closed store of N frames, 2 frames per shard (shard k: frames 2k, 2k+1), frame f's row all f + 1."""
    monkeypatch.setattr(fsm, "SHARD_BYTES", 2 * 64 * 4)
    path = tmp_path / "f.zarr"
    fs = FeatureStore(path, N, signature={"s": 1})
    for f in range(N):
        fs.put(f, _row(f))
    fs.close()
    assert fs._shard_frames == 2
    return path


def _values(path) -> list:
    fs = FeatureStore(path, N, signature={"s": 1})
    out = []
    for f in range(N):
        r = fs.get(f)
        out.append(None if r is None else float(r["a"][0]) if (r["a"] == r["a"][0]).all() else "mixed")
    return out


def _garble(path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at:at + 20] = b"\xff" * 20
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbled"])
def test_a_damaged_shard_is_never_served_and_its_frames_read_as_absent(store, damage):
    shard = store / "a" / "c" / "1" / "0"  # frames 2 and 3
    if damage == "deleted":
        os.remove(shard)
    elif damage == "truncated":
        with open(shard, "r+b") as fh:
            fh.truncate(20)
    else:
        _garble(shard, 10)
    got = _values(store)
    assert got[:2] == [1.0, 2.0] and got[4:] == [5.0, 6.0]
    assert got[2] is None  # a deleted shard once read as zeros (0.0); a damaged one raised out of get()
    fs = FeatureStore(store, N, signature={"s": 1})
    assert fs.get(2) is None and 2 not in fs and 3 not in fs  # the whole shard is forgotten


def test_a_frame_put_into_a_shard_whose_index_is_damaged_is_written_not_raised(store):
    with open(store / "a" / "c" / "1" / "0", "r+b") as fh:
        fh.truncate(20)
    fs = FeatureStore(store, N, signature={"s": 1})
    assert 3 in fs  # not read yet: the damage is found by the write below
    fs.put(2, _row(2))  # shard 1 is complete (frame 3 present): rewritten, keeping frame 3's bytes
    fs.close()  # once raised CacheError ("... is damaged"), and so did every later put
    got = _values(store)
    assert got[2] == 3.0 and got[3] is None and got[:2] == [1.0, 2.0]


@pytest.mark.parametrize("damage", ["present_deleted", "present_chunk_garbled", "array_json_garbled",
                                    "array_deleted", "dtypes_lost"])
def test_a_store_whose_structure_is_damaged_is_rebuilt_not_raised(store, damage):
    if damage == "present_deleted":
        shutil.rmtree(store / "present")
    elif damage == "present_chunk_garbled":
        for p in glob.glob(str(store / "present" / "c" / "*")):
            with open(p, "wb") as fh:
                fh.write(b"garbage")
    elif damage == "array_json_garbled":
        (store / "a" / "zarr.json").write_text("{garbage")
    elif damage == "array_deleted":
        shutil.rmtree(store / "a")
    else:
        meta = json.loads((store / "zarr.json").read_text())
        del meta["attributes"]["dtypes"], meta["attributes"]["shard_frames"]
        (store / "zarr.json").write_text(json.dumps(meta))
    assert _values(store) == [None] * N  # once KeyError / RuntimeError / JSONDecodeError / TypeError
    fs = FeatureStore(store, N, signature={"s": 1})
    for f in range(N):
        fs.put(f, _row(f))
    fs.close()
    assert _values(store) == [float(f + 1) for f in range(N)]


def test_a_store_of_the_older_layout_without_orders_is_read_in_c_order(store):
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["orders"]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert _values(store) == [float(f + 1) for f in range(N)]


def _disk_full(monkeypatch):
    """Every write of the feature store fails as on a full disk (the other stores write as usual)."""
    import errno

    from samtrack.io import zarr_arrays

    write_rows = zarr_arrays.FrameArray.write_rows

    def full(self, rows):
        if "features.zarr" in str(getattr(self._writer, "_dir", "")):
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        return write_rows(self, rows)

    monkeypatch.setattr(zarr_arrays.FrameArray, "write_rows", full)


def _video(tmp_path, n=8):
    from tests import media

    return media.write_video(tmp_path / "v.mp4", n, w=64, h=64)


def test_a_feature_store_that_cannot_be_written_does_not_stop_tracking(tmp_path, monkeypatch):
    import samtrack
    from samtrack.session.backends.fake import FakeBackend

    _disk_full(monkeypatch)
    vid, b = _video(tmp_path), FakeBackend(64)
    with samtrack.open_session(vid, backend=b, workdir=tmp_path / "w") as s:
        s.add_points(0, 1, [[30, 30]], [1])
        frames = [r.frame_idx for r in s.propagate("forward")]  # once: OSError out of propagate
        assert frames == list(range(8))
        assert s.features.stats["failed_writes"] > 0 and s.features.cached_frames == 0


def test_precomputing_features_on_a_full_disk_raises_a_cache_error_saying_what_to_do(tmp_path, monkeypatch):
    import samtrack
    from samtrack.errors import CacheError
    from samtrack.session.backends.fake import FakeBackend

    _disk_full(monkeypatch)
    with samtrack.open_session(_video(tmp_path), backend=FakeBackend(64), workdir=tmp_path / "w") as s:
        with pytest.raises(CacheError, match="free disk space"):  # once a bare OSError (a traceback in the CLI)
            s.precompute_features()
        assert s.features.drop_when_behind  # tracking's setting is back


@pytest.mark.parametrize("budget", [-1, "20GB", 1.5, True])
def test_a_nonsense_disk_budget_is_an_invalid_option_at_open(tmp_path, budget):
    import samtrack
    from samtrack.errors import InvalidOptionError
    from samtrack.session import SessionConfig
    from samtrack.session.backends.fake import FakeBackend

    with pytest.raises(InvalidOptionError, match="feature_disk_budget_bytes"):  # once accepted: -1 kept nothing
        samtrack.open_session(_video(tmp_path), backend=FakeBackend(64), workdir=tmp_path / "w",
                              config=SessionConfig(feature_disk_budget_bytes=budget))


def test_a_budget_of_zero_keeps_only_the_shard_written_last(tmp_path, monkeypatch):
    monkeypatch.setattr(fsm, "SHARD_BYTES", 2 * 64 * 4)
    fs = FeatureStore(tmp_path / "f.zarr", N, signature={"s": 1}, disk_budget_bytes=0)
    for f in range(N):
        fs.put(f, _row(f))
    fs.close()
    assert [f in fs for f in range(N)] == [False] * 4 + [True] * 2
    assert float(fs.get(5)["a"][0]) == 6.0


def test_precomputing_a_range_given_backwards_encodes_it(tmp_path):
    import samtrack
    from samtrack.session.backends.fake import FakeBackend

    b = FakeBackend(64)
    with samtrack.open_session(_video(tmp_path), backend=b, workdir=tmp_path / "w") as s:
        assert s.precompute_features(5, 2) == 4  # once 0: nothing encoded, nothing said
        assert sorted(b.calls["encode_image"]) == [2, 3, 4, 5]
