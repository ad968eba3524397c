"""`samtrack batch --executor ray` on one local Ray cluster for this module (127.0.0.1 only, no
dashboard, no usage stats, its token under a temporary folder, shut down at the end): tasks and
actors modes equal `samtrack track` on each video alone, a Ray worker or actor killed with SIGKILL
mid-video is replaced and the video resumes from its last completed frame, a corrupt video fails
alone, a finished batch is not tracked again."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.test_batch import (KILL_AT, SHORT, Killer, assert_same_masks, assets,  # noqa: F401 (fixture)
                              check_killed_video_resumed, job_name, write_manifest)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local cluster for the module: 2 CPUs, bound to 127.0.0.1."""
    tmp = Path(tempfile.mkdtemp(prefix="st-ray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    token = tmp / "auth_token"
    token.write_text(uuid.uuid4().hex)
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback node IP
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),  # not ~/.ray
           "SAMTRACK_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import ray

        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "r"),
                 log_to_driver=False, configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def _listening(ray) -> list:
    import psutil

    me = psutil.Process()
    out = []
    for p in [me] + me.children(recursive=True):
        try:
            out += [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return out


def _defaults(assets):
    from samtrack.batch import RowDefaults

    return RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128)


def test_ray_tasks_equal_track_alone_survive_a_killed_worker_and_rerun_nothing(ray_cluster, assets, tmp_path):
    from samtrack.batch import run_batch

    ips = _listening(ray_cluster)
    assert ips and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in ips), ips  # nothing on other interfaces
    manifest = write_manifest(assets, tmp_path / "m.csv", ("long",) + SHORT + ("corrupt",))
    out = tmp_path / "out"
    with Killer("long", out / "long", KILL_AT) as k:
        report = run_batch(manifest, out, executor="ray", progress=k, defaults=_defaults(assets), retries=2)
    status = {v.name: v for v in report.videos}
    assert status["corrupt"].status == "failed" and "cannot parse" in status["corrupt"].error
    assert all(status[job_name(n)].status == "done" for n in SHORT + ("long",))
    for name in SHORT:
        assert_same_masks(out / job_name(name), assets / "ref" / name)
    assert any(e.kind == "retry" and e.name == "long" for e in k.events)
    check_killed_video_resumed(k, report, assets / "ref" / "long")

    again = run_batch(manifest, out, executor="ray", defaults=_defaults(assets))  # finished: skipped in the driver
    assert all(v.finished_before and v.model_calls == 0 for v in again.videos if v.name != "corrupt")
    (out / "b" / "batch.json").unlink()  # now a Ray task opens b's job folder: nothing left to compute
    (b,) = run_batch(manifest, out, executor="ray", only=["b"], defaults=_defaults(assets)).videos
    assert b.status == "done" and not b.finished_before and b.model_calls == 0 and b.frames_computed == 0


def test_ray_actors_replace_a_dead_actor_without_losing_its_video(ray_cluster, assets, tmp_path):
    from samtrack.batch import run_batch

    manifest = write_manifest(assets, tmp_path / "m.csv", ("long", "a", "c"))
    out = tmp_path / "out"
    with Killer("long", out / "long", KILL_AT) as k:
        report = run_batch(manifest, out, executor="ray", mode="actors", workers=2, progress=k,
                           defaults=_defaults(assets))
    assert [v.status for v in report.videos] == ["done", "done", "done"]
    assert report.workers_started == 3  # two actors, and one in place of the killed one
    retries = [e for e in k.events if e.kind == "retry"]
    assert len(retries) == 1 and retries[0].name == "long" and "actor died" in retries[0].error
    check_killed_video_resumed(k, report, assets / "ref" / "long")
    for name in ("a", "c"):
        assert_same_masks(out / name, assets / "ref" / name)
    assert (out / "c" / "labels.npy").is_file()
