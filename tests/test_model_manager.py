"""The model manager: registry rows, downloads through huggingface_hub against a local hub
(127.0.0.1, threads, no external network), the `samtrack models` commands, the default model,
and a fine-tuned checkpoint recognised by its state dict."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from samtrack.errors import CheckpointError, UnknownModelError
from samtrack.session import checkpoints as ck
from samtrack.session import models

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[1]


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Enough of the hub's ``/{repo}/resolve/{revision}/{file}`` for ``hf_hub_download``: HEAD gives
    ``X-Repo-Commit`` and the ETag (an LFS file: ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``;
    a small file: the git blob sha1), GET serves the bytes with ``Range`` support."""

    hub: "FakeHub"

    def _parse(self):
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        return (m.group(1), m.group(3)) if m else (None, None)

    def _refused(self, repo) -> bool:
        status = self.hub.refuse.get(repo)
        if status is None:
            return False
        self.send_response(status)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", f"Access to model {repo} is restricted." if status == 401 else
                         f"Access to model {repo} is restricted and you are not in the authorized list.")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _meta(self, repo, name):
        body = self.hub.files.get((repo, name))
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(self._status)
        self.send_header("X-Repo-Commit", COMMIT)
        etag = self.hub.etags.get((repo, name))
        if name.endswith(".pt"):  # an LFS file, as the hub serves checkpoints
            etag = etag or hashlib.sha256(body).hexdigest()
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(body)))
        else:
            etag = etag or hashlib.sha1(f"blob {len(body)}\0".encode() + body).hexdigest()
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        return body

    def do_HEAD(self):  # noqa: N802
        repo, name = self._parse()
        self.hub.log("HEAD", self)
        if self._refused(repo):
            return
        self._status = 200
        body = self._meta(repo, name)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

    def do_GET(self):  # noqa: N802
        repo, name = self._parse()
        self.hub.log("GET", self)
        if self._refused(repo):
            return
        self.hub.before_body()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self._status = 206 if rng else 200
        body = self._meta(repo, name)
        if body is None:
            return
        part = body[start:]
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        cut = self.hub.cut_after.pop(name, None)
        if cut is not None:  # a dropped connection: part of the body, then the socket closes
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)

    def log_message(self, *a):
        pass


class FakeHub:
    """A hub on 127.0.0.1 (one thread per request), stopped by the fixture."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.etags: dict[tuple[str, str], str] = {}  # a wrong hash to announce
        self.refuse: dict[str, int] = {}  # repo -> 401 / 403
        self.cut_after: dict[str, int] = {}  # file -> bytes sent before the connection drops (once)
        self.requests: list[dict] = []
        self.hold_get_until_heads = 0  # GET bodies wait until this many HEADs arrived
        self._cond = threading.Condition()
        handler = type("H", (HubHandler,), {"hub": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def log(self, method, h) -> None:
        with self._cond:
            self.requests.append({"method": method, "path": h.path, "range": h.headers.get("Range"),
                                  "auth": h.headers.get("Authorization")})
            self._cond.notify_all()

    def before_body(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: sum(r["method"] == "HEAD" for r in self.requests) >= self.hold_get_until_heads,
                                timeout=60)

    def gets(self, name: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"].endswith("/" + name)]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    h = FakeHub()
    h.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.delenv("SAMTRACK_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-user-cache"))  # not the user's own cache
    monkeypatch.setenv("SAMTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMTRACK_CHECKPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    yield h
    h.server.shutdown()
    h.server.server_close()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def _serve(hub: FakeHub, spec, body: bytes) -> None:
    hub.files[(spec.hf_id, spec.checkpoint)] = body
    for extra in spec.hf_files:
        hub.files[(spec.hf_id, extra)] = b'{"model_type": "sam3"}\n'


# -- registry ---------------------------------------------------------------------------------
def test_registry_lists_every_family_with_hub_ids_and_files():
    fams = {m.family for m in models.MODELS.values()}
    assert fams == {"sam2", "sam2.1", "sam3"}
    for m in models.MODELS.values():
        assert re.fullmatch(r"facebook/[a-z0-9.\-]+", m.hf_id) and m.checkpoint.endswith(".pt")
        assert m.backend == ("sam2" if m.family in ("sam2", "sam2.1") else "sam3")
    s3 = models.get_model("sam3")
    assert (s3.hf_id, s3.checkpoint, s3.hf_files, s3.image_size, s3.gated) == \
        ("facebook/sam3", "sam3.pt", ("config.json",), 1008, True)
    assert models.get_model("facebook/sam2.1-hiera-small").name == "sam2.1_hiera_small"
    doc = " ".join(models.__doc__.split())
    assert "accept the licence" in doc and "HF_TOKEN" in doc and "https://huggingface.co/facebook/sam3" in doc


# -- downloads --------------------------------------------------------------------------------
def test_download_verified_then_found_without_network(hub):
    spec = models.get_model("sam2.1_hiera_tiny")
    body = _payload()
    _serve(hub, spec, body)
    seen = []
    p = ck.download_checkpoint(spec, progress=lambda done, total: seen.append((done, total)))
    assert p.read_bytes() == body and p.name == spec.checkpoint
    assert seen[-1] == (len(body), len(body))
    assert ck.find_checkpoint(spec) == p  # the hub cache under <cache>/checkpoints is searched
    hub.server.shutdown()  # no network from here on: a present file needs none
    assert ck.download_checkpoint(spec) == p


def test_a_file_that_does_not_match_the_hubs_sha256_is_removed(hub):
    spec = models.get_model("sam2.1_hiera_tiny")
    _serve(hub, spec, _payload())
    hub.etags[(spec.hf_id, spec.checkpoint)] = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        ck.download_checkpoint(spec)
    assert ck.find_checkpoint(spec) is None
    assert not any(p.is_file() for p in (ck.download_dir()).rglob("*") if "blobs" in p.parts)


def test_a_dropped_connection_is_resumed_with_a_range_request(hub):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE  # bytes written to disk at a time (10 MiB)

    spec = models.get_model("sam2.1_hiera_small")
    body = _payload(DOWNLOAD_CHUNK_SIZE + 2_000_000, seed=1)
    _serve(hub, spec, body)
    hub.cut_after[spec.checkpoint] = DOWNLOAD_CHUNK_SIZE + 1_000_000  # one whole chunk arrives, then the drop
    p = ck.download_checkpoint(spec)
    assert p.read_bytes() == body
    gets = hub.gets(spec.checkpoint)
    assert len(gets) == 2 and gets[0]["range"] is None and gets[1]["range"] == f"bytes={DOWNLOAD_CHUNK_SIZE}-"


@pytest.mark.parametrize("status, words", [(401, "not logged in, or the token is not valid"),
                                           (403, "this account has not been granted access")])
def test_a_gated_refusal_says_what_to_do(hub, status, words):
    spec = models.get_model("sam3")
    _serve(hub, spec, _payload())
    hub.refuse["facebook/sam3"] = status
    with pytest.raises(CheckpointError) as e:
        ck.download_checkpoint(spec, token="hf_test")
    msg = str(e.value)
    for needle in (f"HTTP {status}", words, "gated", "https://huggingface.co/facebook/sam3", "accept the licence",
                   "https://huggingface.co/settings/tokens", "HF_TOKEN", "token=YOUR_TOKEN"):
        assert needle in msg, msg
    assert "hf_test" not in msg  # the token never appears in a message
    assert all(r["auth"] == "Bearer hf_test" for r in hub.requests)


def test_sam3_brings_its_config_and_small_files_are_checked_by_git_sha1(hub):
    spec = models.get_model("sam3")
    _serve(hub, spec, _payload(50_000, seed=3))
    p = ck.download_checkpoint(spec)
    assert (p.parent / "config.json").read_bytes() == b'{"model_type": "sam3"}\n'
    assert models.model_table()[-1].present
    hub.etags[(spec.hf_id, "config.json")] = "f" * 40
    (p.parent / "config.json").unlink()
    with pytest.raises(CheckpointError, match="git blob sha1"):
        ck.download_checkpoint(models.get_model("sam3"), dest_dir=ck.download_dir().parent / "other")


def test_offline_fails_fast_with_how_to_get_it(hub, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("SAMTRACK_MIRROR", f"http://127.0.0.1:{closed}")  # the lab mirror wins over HF_ENDPOINT
    spec = models.get_model("sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError) as e:
        ck.download_checkpoint(spec)
    msg = str(e.value)
    assert f"127.0.0.1:{closed}" in msg and "samtrack models download sam2.1_hiera_tiny" in msg
    assert "checkpoint=PATH" in msg and "checkpoint='untrained'" in msg
    assert hub.requests == []  # HF_ENDPOINT was not used


_RACE = """
import sys
from samtrack.session import checkpoints as ck, models
p = ck.download_checkpoint(models.get_model("sam2.1_hiera_base_plus"), timeout=30)
print(p)
"""


def test_two_processes_downloading_at_once_end_with_one_file_and_one_download(hub):
    spec = models.get_model("sam2.1_hiera_base_plus")
    body = _payload(2_000_000, seed=2)
    _serve(hub, spec, body)
    hub.hold_get_until_heads = 4  # each process: samtrack's probe + the library's HEAD; both before any body
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _RACE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == body
    assert len(hub.gets(spec.checkpoint)) == 1  # the file lock: the second process waited, then used the file
    blobs = [p for p in ck.download_dir().rglob("*") if p.is_file() and "blobs" in p.parts]
    assert len(blobs) == 1 and not list(ck.download_dir().rglob("*.incomplete"))


# -- the CLI ----------------------------------------------------------------------------------
def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "samtrack.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def test_models_download_with_token_and_a_refusal_without_traceback(hub):
    spec = models.get_model("sam3")
    _serve(hub, spec, _payload(100_000, seed=4))
    hub.refuse["facebook/sam3"] = 403
    r = _cli("models", "download", "sam3", "--token", "hf_abc")
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert "--token YOUR_TOKEN" in err and "accept the licence" in err and "https://huggingface.co/facebook/sam3" in err
    del hub.refuse["facebook/sam3"]
    r = _cli("models", "download", "sam3", "--token", "hf_abc")
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stderr and "sam3.pt" in r.stderr
    assert hub.requests[-1]["auth"] == "Bearer hf_abc"
    r = _cli("models", "download", "sam3")  # present: nothing to download, no network
    assert r.returncode == 0 and "already here" in r.stderr


def test_models_table_json_default_and_memory_column(hub, monkeypatch):
    spec = models.get_model("sam2.1_hiera_tiny")
    _serve(hub, spec, _payload())
    ck.download_checkpoint(spec)
    r = _cli("models", "default", "sam2_hiera_small")
    assert r.returncode == 0 and "sam2_hiera_small" in r.stderr and "samtrack models download" in r.stderr
    r = _cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(models.MODELS)
    assert rows["sam2.1_hiera_tiny"]["present"] and rows["sam2.1_hiera_tiny"]["disk_bytes"] == len(_payload())
    assert not rows["sam3"]["present"] and rows["sam3"]["gated"]
    assert [n for n, row in rows.items() if row["default"]] == ["sam2_hiera_small"]
    measured = models.memory_figures()
    for name, row in rows.items():
        assert row["memory"] == measured.get(name)
    r = _cli("models", "default", "sam9")
    assert r.returncode == 2 and "unknown model 'sam9'" in r.stderr and "Traceback" not in r.stderr


def test_the_table_shows_measured_memory_and_never_a_guess(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from samtrack.cli import app

    monkeypatch.setenv("SAMTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    fig = {"fp32": {"peak_rss_bytes": 3 * 2**30}, "bf16": {"peak_rss_bytes": 2 * 2**30}}
    (tmp_path / "mem.json").write_text(json.dumps({"models": {"sam2_hiera_tiny": fig}}))
    monkeypatch.setattr(models, "MEMORY_FILE", tmp_path / "mem.json")
    r = CliRunner().invoke(app, ["models"], terminal_width=250)
    assert r.exit_code == 0, r.output
    lines = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("│")}
    assert set(lines) == set(models.MODELS) and f"{models.DEFAULT_MODEL} *" in lines[models.DEFAULT_MODEL]
    assert "3.0 GiB" in lines["sam2_hiera_tiny"] and "2.0 GiB" in lines["sam2_hiera_tiny"]
    for name in set(models.MODELS) - {"sam2_hiera_tiny"}:
        assert lines[name].count("not measured") == 2, lines[name]
    assert "sam3 is gated" in " ".join(r.output.split())


def test_the_shipped_measurements_are_complete_records():
    for name, m in models.memory_figures().items():
        assert name in models.MODELS and m["params"] > 1e6 and m["image_size"] == models.MODELS[name].image_size
        for dtype in ("fp32", "bf16"):
            if dtype in m:
                assert m[dtype]["peak_rss_bytes"] > m[dtype]["param_bytes"] / 2 > 0


def test_the_stored_default_is_used_when_no_model_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTRACK_CACHE_DIR", str(tmp_path / "cache"))
    assert models.get_model().name == models.DEFAULT_MODEL
    models.set_default_model("sam2_hiera_tiny")
    assert models.get_model(None).name == "sam2_hiera_tiny" and models.default_model() == "sam2_hiera_tiny"
    models.settings_path().write_text('{"default": "gone_model"}')
    with pytest.raises(UnknownModelError, match="samtrack models default NAME"):
        models.get_model()


def test_open_session_uses_the_default_and_recognises_a_checkpoints_model(tmp_path, monkeypatch):
    import torch

    import samtrack
    from tests import media
    from tests import model_utils as mu

    monkeypatch.setenv("SAMTRACK_CACHE_DIR", str(tmp_path / "cache"))
    models.set_default_model("sam2_hiera_tiny")
    vid = media.write_video(tmp_path / "v.mp4", 3, w=64, h=48)
    with samtrack.open_session(vid, checkpoint="untrained", image_size=128, device="cpu", workdir=tmp_path / "w1") as s:
        assert s.backend.spec.name == "sam2_hiera_tiny"  # no model named: the stored default
    tuned = mu.make_checkpoint(tmp_path / "my_finetune.pt", image_size=128)  # a SAM2.1 tiny under any file name
    assert ck.model_for_checkpoint(tuned).name == "sam2.1_hiera_tiny"
    with samtrack.open_session(vid, checkpoint=tuned, image_size=128, device="cpu", workdir=tmp_path / "w2") as s:
        assert s.backend.spec.name == "sam2.1_hiera_tiny"  # the checkpoint's model, not the default
    small = mu.make_checkpoint(tmp_path / "other.pt", model="sam2_hiera_small", image_size=128)
    assert ck.resolve_model(None, small).name == "sam2_hiera_small"
    assert ck.resolve_model("sam2.1_hiera_large", small).name == "sam2.1_hiera_large"  # a named model wins
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, tmp_path / "alien.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of any model family"):
        ck.resolve_model(None, tmp_path / "alien.pt")


def test_a_variant_name_opens_with_its_models_row(tmp_path, monkeypatch):
    import torch

    import samtrack.session.backends as backends

    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "v.pt")
    for said, row in (("sam3_tiny", "sam3"), ("sam3", "sam3"), ("sam2.1_hiera_small", "sam2.1_hiera_small")):
        monkeypatch.setattr(backends, "recognise", lambda sd, said=said: said)
        assert ck.model_for_checkpoint(tmp_path / "v.pt").name == row
    monkeypatch.setattr(backends, "recognise", lambda sd: "an unregistered Hiera (20 blocks, width 80, sam2.1)")
    with pytest.raises(CheckpointError, match="holds an unregistered Hiera"):
        ck.model_for_checkpoint(tmp_path / "v.pt")
