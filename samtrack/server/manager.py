"""Sessions of a ``samtrack serve`` process: opened once, shared by requests, evicted when idle, reopened
from their folders.

Invariants: a session id is a digest of its resolved work folder, so the same video, model and size give
the same id (after a restart too); the arguments each id was opened with are kept in
``<sessions>/ids/<id>.json``, so a request for a known id reopens it without the client re-posting. A
model is built once per (model, checkpoint, image size, device) and shared. A session in use by a
request or propagating is never evicted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from samtrack.errors import InvalidOptionError, SessionBusyError, SessionClosedError
from samtrack.server.locks import Device, FairLock
from samtrack.server.security import Roots

log = logging.getLogger(__name__)
_SID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class OpenArgs:
    """What a session is opened with, paths already checked and resolved (kept as JSON per id)."""

    video: str
    model: str | None = None
    checkpoint: str | None = None  # a real path, "untrained", or None (the server's checkpoint folders)
    image_size: int | None = None
    workdir: str | None = None  # None until the model says where the default folder is
    video_options: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


@dataclass(eq=False)
class Served:
    """One open session and what the server keeps about it. ``lock`` guards every call into the
    session (it is not thread-safe); a propagation takes it per frame, so reads go on between frames."""

    sid: str
    args: OpenArgs
    session: object  # TrackingSession
    device: Device
    lock: FairLock = field(default_factory=FairLock)
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    propagation: object | None = None  # the running samtrack.server.streaming.PropagationJob
    # guards setting ``propagation`` and a job's "do I still hold it? then cancel the session" (held for a
    # few bytecodes only, so the event loop may take it; ``lock`` is held for whole frames)
    owner_lock: threading.Lock = field(default_factory=threading.Lock)
    queued: bool = False
    # set once ``session`` is closed (its folder free again): a reopen of the id waits for it, as a close
    # started by an eviction still holds the folder's lock (samtrack.io.folder_lock)
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def propagating(self) -> bool:
        """True while a propagation job holds the session (running or waiting for its device)."""
        return self.propagation is not None

    def check_idle(self) -> None:
        """Raise :class:`SessionBusyError` while a propagation runs (prompts would change what it reads)."""
        if self.propagating:
            raise SessionBusyError(f"session {self.sid} is propagating: wait for its stream to end, or cancel it "
                                   f"(POST /v1/sessions/{self.sid}/cancel, RemoteSession.cancel()), then try again")

    def state(self) -> dict:
        """The session's state as docs/remote.md gives it (call with ``lock`` held)."""
        from samtrack.session.prompts import prompt_record

        s = self.session
        info = s.frames.info
        objects = {}
        for oid in s.obj_ids:
            meta = s.results.object_meta(oid)
            objects[str(oid)] = {"name": meta.get("name"), "parent": meta.get("parent"), "color": meta.get("color"),
                                 "keyframes": s.keyframes(oid)}
        return {"id": self.sid, "video": self.args.video, "workdir": str(s.workdir), "model": s.backend.spec.name,
                "image_size": int(s.backend.image_size), "device": self.device.name,
                "info": {"n_frames": int(s.n_frames), "height": int(s.height), "width": int(s.width),
                         "fps": float(info.fps) if info.fps else None, "source": self.args.video},
                "obj_ids": s.obj_ids, "objects": objects,
                "concepts": [[int(f), prompt_record(q)[0]] for f, q in s.concepts],
                "propagating": self.propagating, "queued": self.queued}


def check_kinds(video: str, checkpoint: str | None, workdir: str | None, *, given: dict | None = None) -> None:
    """Refuse (:class:`InvalidOptionError`) a video that is neither a regular file nor a folder, a checkpoint
    that is not a regular file, and a workdir that exists but is not a folder, before anything opens them: a
    FIFO or a device under a root would block the reader forever while it holds the device's lock. Only
    ``os.stat`` runs (it opens nothing). ``given``: the client's own names, for the messages."""
    given = given or {}

    def mode(p: str) -> int | None:  # st_mode of p, None when it cannot be stat'ed
        try:
            return os.stat(p).st_mode
        except OSError:
            return None

    m = mode(video)
    if m is not None and not (stat.S_ISREG(m) or stat.S_ISDIR(m)):
        raise InvalidOptionError(f"video {given.get('video', video)!r} is not a regular file or a folder of images "
                                 "(a pipe, socket or device): name a video file or upload one")
    if checkpoint not in (None, "untrained"):
        m = mode(checkpoint)
        if m is not None and not stat.S_ISREG(m):
            raise InvalidOptionError(f"checkpoint {given.get('checkpoint', checkpoint)!r} is not a regular file: "
                                     "name a .pt checkpoint file")
    if workdir is not None:
        m = mode(workdir)
        if m is not None and not stat.S_ISDIR(m):
            raise InvalidOptionError(f"workdir {given.get('workdir', workdir)!r} exists and is not a folder: name a "
                                     "folder (new or a session's), or leave workdir out")


class SessionManager:
    """Open sessions by id, the shared models and the devices. Thread-safe."""

    def __init__(self, roots: Roots, sessions_dir: Path, *, device: str = "auto", max_sessions: int = 8,
                 idle_timeout: float = 0.0):
        self.roots = roots
        self.sessions_dir = Path(sessions_dir)
        self.ids_dir = self.sessions_dir / "ids"
        self.ids_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._open: dict[str, Served] = {}
        self._closing: dict[str, Served] = {}  # taken out of _open, its close not done yet (under _lock)
        self._opening: dict[str, threading.Lock] = {}
        self._models: dict[tuple, object] = {}
        self._model_locks: dict[tuple, threading.Lock] = {}
        self._devices: dict[str, Device] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        if idle_timeout > 0:
            self._reaper = threading.Thread(target=self._reap, name="samtrack-idle-sessions", daemon=True)
            self._reaper.start()

    # -- arguments and models -----------------------------------------------------------------------------------
    def open_args(self, body: dict) -> OpenArgs:
        """Check and resolve a client's open request (paths first: nothing outside the roots is touched)."""
        video = str(self.roots.resolve(body.get("video"), what="video", must_exist=True))
        ckpt = body.get("checkpoint")
        if ckpt is not None and ckpt != "untrained":
            ckpt = str(self.roots.resolve(ckpt, what="checkpoint", must_exist=True))
        workdir = body.get("workdir")
        if workdir is not None:
            workdir = str(self.roots.resolve(workdir, what="workdir"))
            self._check_workdir(Path(workdir))
        check_kinds(video, ckpt, workdir, given=body)
        opts = dict(body.get("video_options") or {})
        config = dict(body.get("config") or {})
        if config:
            from samtrack.session import SessionConfig

            try:
                SessionConfig(**config)
            except TypeError as e:
                raise InvalidOptionError(f"config: {e}; the keys are those of samtrack.SessionConfig") from None
        return OpenArgs(video, body.get("model"), ckpt, body.get("image_size"), workdir, opts, config)

    def _check_workdir(self, wd: Path) -> None:
        """A session folder of its own: not a root itself, not the sessions folder, not inside the server's
        own records (``ids``) or the uploads (their files would be mixed with a session's stores)."""
        own = [self.sessions_dir, *self.roots.roots]
        private = [self.ids_dir, self.sessions_dir / "uploads"]
        real = [Path(os.path.realpath(p)) for p in own], [Path(os.path.realpath(p)) for p in private]
        if wd in real[0] or any(wd == p or p in wd.parents for p in real[1]):
            raise InvalidOptionError(f"workdir {str(wd)!r} is one of the server's own folders (a root, the "
                                     "sessions folder, its ids or uploads): name a new folder below a root, or "
                                     "leave workdir out for the server's default")

    def model(self, args: OpenArgs):
        """The backend for ``args`` (built once per model, checkpoint, image size and device)."""
        from samtrack.session import load_model
        from samtrack.session.checkpoints import resolve_model
        from samtrack.session.devices import pick_device

        spec = resolve_model(args.model, args.checkpoint)
        key = (spec.name, args.checkpoint, args.image_size, str(pick_device(self.device)))
        with self._lock:
            lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                log.info("loading %s (checkpoint %s, image size %s) on %s", *key)
                self._models[key] = load_model(spec.name, checkpoint=args.checkpoint, image_size=args.image_size,
                                               device=self.device, download=False)
            return self._models[key]

    def device_of(self, backend) -> Device:
        """The server's :class:`Device` (locks, propagation queue) for the device ``backend`` runs on: one per
        device name, shared by every session on it."""
        name = str(backend.device)
        with self._lock:
            return self._devices.setdefault(name, Device(name))

    @property
    def models(self) -> list[str]:
        """Names of the models loaded in this server (sorted)."""
        return sorted({k[0] for k in self._models})

    # -- sessions -----------------------------------------------------------------------------------------------
    def open(self, body: dict) -> Served:
        """``POST /v1/sessions``: the served session for ``body`` (the same one when already open), held
        for the caller as :meth:`acquire` holds it (give it back with :meth:`release`)."""
        from samtrack.session import default_workdir

        args = self.open_args(body)
        reset = bool(body.get("reset", False))
        backend = self.model(args)
        if args.workdir is None:
            key = default_workdir(args.video, backend.spec, backend.image_size).name
            args = OpenArgs(**{**asdict(args), "workdir": str(self.sessions_dir / key)})
        sid = hashlib.sha1(os.path.realpath(args.workdir).encode()).hexdigest()[:16]
        with self._opening_lock(sid):
            with self._lock:
                cur = self._open.get(sid)
            if cur is not None:
                if cur.args == args and not reset:
                    with self._lock:
                        cur.users += 1
                        cur.last_used = time.monotonic()
                    return cur
                cur.check_idle()
                self._close(cur)
            return self._start(sid, args, backend, reset=reset)

    @contextlib.contextmanager
    def use(self, sid: str) -> Iterator[Served]:
        """The session ``sid`` for one request (reopened from its folder when it was evicted or the
        server restarted); it is not evicted while in use. Unknown ids raise :class:`SessionClosedError`."""
        served = self.acquire(sid)
        try:
            yield served
        finally:
            self.release(served)

    def acquire(self, sid: str) -> Served:
        """As :meth:`use`, for a caller that releases later (:meth:`release`), e.g. a stream."""
        with self._lock:
            cur = self._open.get(sid)
            if cur is not None:
                cur.users += 1
                cur.last_used = time.monotonic()
                return cur
        return self._reopen(sid)

    def release(self, served: Served) -> None:
        """Give back a session taken with :meth:`acquire` (it may be evicted once nobody uses it)."""
        with self._lock:
            served.users -= 1
            served.last_used = time.monotonic()

    def list(self) -> list[Served]:
        """The open sessions (a snapshot)."""
        with self._lock:
            return list(self._open.values())

    def close(self, sid: str) -> bool:
        """``DELETE /v1/sessions/{sid}``: flush and close (the folder and the id stay). Raises
        :class:`SessionBusyError` while it propagates."""
        self._check_sid(sid)
        with self._opening_lock(sid):
            with self._lock:
                cur = self._open.get(sid)
            if cur is None:
                if not (self.ids_dir / f"{sid}.json").is_file():
                    raise self._unknown(sid)
                return True
            cur.check_idle()
            self._close(cur)
            return True

    def close_all(self) -> None:
        """Stop propagations and close every session (server shutdown)."""
        self._stop.set()
        for s in self.list():
            if s.propagation is not None:
                s.propagation.cancel()
        for s in self.list():
            if s.propagation is not None:
                s.propagation.join(30)
            self._close(s)

    # -- internals ------------------------------------------------------------------------------------------------
    def _start(self, sid: str, args: OpenArgs, backend, *, reset: bool = False) -> Served:
        from samtrack.io.folder_lock import FolderLock
        from samtrack.session import SessionConfig, open_session

        with self._lock:
            closing = self._closing.get(sid)
        if closing is not None:  # evicted a moment ago and still closing: it holds the folder until done
            closing.closed.wait()
        # the folder first: one another process writes is refused before an idle session is evicted for room
        lock = FolderLock(args.workdir).acquire(purpose="samtrack serve")
        try:
            self._make_room()
            device = self.device_of(backend)
            config = SessionConfig(**args.config) if args.config else None
        except BaseException:
            lock.release()
            raise
        with device.lock:  # reopening re-runs prompts whose memory never reached the disk (model work)
            session = open_session(args.video, backend=backend, workdir=args.workdir, config=config, reset=reset,
                                   folder_lock=lock, **args.video_options)
        self._save_args(sid, args)
        served = Served(sid, args, session, device, users=1)  # held for the request that opened it
        with self._lock:
            self._open[sid] = served
        log.info("session %s open: %s (%s)", sid, args.video, args.workdir)
        return served

    def _reopen(self, sid: str) -> Served:
        self._check_sid(sid)
        with self._opening_lock(sid):
            with self._lock:
                cur = self._open.get(sid)
            if cur is not None:
                with self._lock:
                    cur.users += 1
                return cur
            path = self.ids_dir / f"{sid}.json"
            try:
                raw = json.loads(path.read_text())
                args = OpenArgs(**{f.name: raw[f.name] for f in fields(OpenArgs) if f.name in raw})
            except FileNotFoundError:
                raise self._unknown(sid) from None
            except (ValueError, TypeError) as e:
                raise SessionClosedError(f"session {sid}'s record {path} is damaged ({e}): open the video again "
                                         "with POST /v1/sessions") from None
            # the roots may have changed since: check the recorded paths again
            for what, p in (("video", args.video), ("workdir", args.workdir)):
                self.roots.resolve(p, what=what)
            if args.checkpoint not in (None, "untrained"):
                self.roots.resolve(args.checkpoint, what="checkpoint")
            check_kinds(args.video, args.checkpoint, args.workdir)
            log.info("reopening session %s from %s", sid, args.workdir)
            return self._start(sid, args, self.model(args))

    def _save_args(self, sid: str, args: OpenArgs) -> None:
        path = self.ids_dir / f"{sid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(args), indent=1))
        os.replace(tmp, path)

    def _take_out(self, served: Served) -> None:
        """Remove ``served`` from the open sessions as one about to be closed (call with ``_lock`` held): a
        reopen of its id meanwhile waits for :meth:`_close` to free the folder instead of finding it in use."""
        if self._open.get(served.sid) is served:
            del self._open[served.sid]
        self._closing[served.sid] = served

    def _close(self, served: Served) -> None:
        with self._lock:
            self._take_out(served)
        try:
            with served.lock:
                try:
                    served.session.close()
                except Exception:  # noqa: BLE001  (closing others goes on; the session logged what failed)
                    log.exception("closing session %s failed", served.sid)
        finally:
            with self._lock:
                if self._closing.get(served.sid) is served:
                    del self._closing[served.sid]
            served.closed.set()
        log.info("session %s closed", served.sid)

    def _make_room(self) -> None:
        """Close least recently used idle sessions until one more fits under ``max_sessions``."""
        while True:
            with self._lock:
                if len(self._open) < self.max_sessions:
                    return
                idle = [s for s in self._open.values() if s.users == 0 and not s.propagating]
                if not idle:
                    log.warning("%d sessions open, none idle: opening one more than --max-sessions", len(self._open))
                    return
                victim = min(idle, key=lambda s: s.last_used)
                self._take_out(victim)
            log.info("evicting session %s (least recently used; --max-sessions %d)", victim.sid, self.max_sessions)
            self._close(victim)

    def _reap(self) -> None:
        while not self._stop.wait(max(0.2, min(self.idle_timeout / 4, 30.0))):
            now = time.monotonic()
            with self._lock:
                old = [s for s in self._open.values()
                       if s.users == 0 and not s.propagating and now - s.last_used > self.idle_timeout]
                for s in old:
                    self._take_out(s)
            for s in old:
                log.info("evicting session %s (idle for more than %g s)", s.sid, self.idle_timeout)
                self._close(s)

    @contextlib.contextmanager
    def _opening_lock(self, sid: str):
        with self._lock:
            lock = self._opening.setdefault(sid, threading.Lock())
        with lock:
            yield

    def _check_sid(self, sid: str) -> None:
        if not _SID.match(sid or ""):
            raise self._unknown(sid)

    @staticmethod
    def _unknown(sid: str) -> SessionClosedError:
        return SessionClosedError(f"no session {sid!r} on this server: open the video again "
                                  "(POST /v1/sessions, client.open_session(...))")
