"""One writer per session folder: an OS file lock held while a session is open.

Two sessions writing one folder (a ``samtrack track`` still running in another terminal, the
viewer opened on a job folder a batch worker tracks, two default-workdir sessions of one video)
overwrite each other's prompts, memory and results: the last close wins and the other's work is
gone without a word. A session therefore holds ``<folder>/.samtrack.lock`` from open to close, and
a second opener, in this process or another, gets :class:`~samtrack.errors.SessionInUseError`
naming the holder (``<folder>/.samtrack.owner.json``: pid, host, command, since when).

The lock is :class:`filelock.FileLock`: ``flock(2)``, which the operating system drops when the
holding process dies, so a crash (kill -9, power loss) never leaves a folder locked. On a file system
without flock (some network mounts) filelock falls back to a marker file, which a crash can leave
behind (the refusal then names a process that is gone: delete ``<folder>/.samtrack.lock``). The owner
file is only a description and may be stale after a crash; it is rewritten by the next holder. A
session of this process dropped without ``close()`` holds the folder until it is garbage-collected:
an opener in this process collects garbage once before refusing.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import filelock

from samtrack.errors import InvalidOptionError, SessionInUseError

log = logging.getLogger(__name__)
LOCK_NAME = ".samtrack.lock"
OWNER_NAME = ".samtrack.owner.json"


class FolderLock:
    """The exclusive lock of one session folder. Not reentrant: a second :class:`FolderLock` on the same
    folder is refused while this one holds it, also in the same process. :meth:`release` is idempotent and
    callable from any thread."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = filelock.FileLock(self.folder / LOCK_NAME, timeout=0, thread_local=False)
        self._held = False

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._held

    def acquire(self, *, purpose: str = "a samtrack session") -> FolderLock:
        """Take the lock without waiting (the folder is created if missing) and record this process as
        its holder; returns self. Raises :class:`~samtrack.errors.SessionInUseError` when another session
        holds it (its message names the holder and what to do), and
        :class:`~samtrack.errors.InvalidOptionError` when the folder cannot be created or written (a file
        of that name, no permission, a read-only file system)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self._try() and not self._collected_holder():
                owner = read_owner(self.folder)
                raise SessionInUseError(in_use_message(self.folder, owner), holder=owner)
        except OSError as e:
            what = ("is a file, not a folder" if isinstance(e, FileExistsError) else
                    "lies under a file, not a folder" if isinstance(e, NotADirectoryError) else
                    f"cannot be used ({e.strerror or e})")
            raise InvalidOptionError(f"work folder {self.folder} {what}: name a folder samtrack can create and "
                                     "write (a new one, or a session's)") from e
        self._held = True
        try:
            _write_owner(self.folder, purpose)
        except OSError as e:  # a description only: the lock itself is what guards the folder
            log.warning("could not record the owner of %s: %s", self.folder, e)
        return self

    def _try(self) -> bool:
        """One attempt without waiting: True when taken. filelock's warnings (its soft-lock fallback on a file
        system without flock) are logged, not printed."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._lock.acquire(timeout=0)
                return True
            except filelock.Timeout:
                return False
            finally:
                for w in caught:
                    log.warning("locking %s: %s", self.folder, w.message)

    def _collected_holder(self) -> bool:
        """When this process is the holder: collect garbage (a session dropped without ``close()`` and
        unreachable keeps its lock until collected) and try again. True when that freed the folder."""
        owner = read_owner(self.folder)
        if owner.get("pid") != os.getpid() or owner.get("host") != socket.gethostname():
            return False
        gc.collect()
        if not self._try():
            return False
        log.warning("%s was held by a session of this process that was dropped without close(): anything it "
                    "had not written is lost; close sessions (or use `with open_session(...) as s:`)", self.folder)
        return True

    def check_guards(self, folder: str | os.PathLike) -> None:
        """Raise :class:`~samtrack.errors.InvalidOptionError` unless this lock is held and is ``folder``'s
        (for a caller handing an already taken lock to a session: an unheld lock, or another folder's, would
        let a second writer in)."""
        if not self._held or os.path.realpath(self.folder) != os.path.realpath(folder):
            state = "is not held" if not self._held else f"is the lock of {self.folder}, not of {folder}"
            raise InvalidOptionError(f"folder_lock {state}: pass the workdir's own lock, taken with "
                                     "FolderLock(workdir).acquire(), or leave folder_lock out")

    def release(self) -> None:
        """Give the lock back (the owner file is removed first); a no-op when not held."""
        if not self._held:
            return
        self._held = False
        try:
            (self.folder / OWNER_NAME).unlink(missing_ok=True)
        except OSError:
            pass  # the folder went away (deleted while open): nothing to describe
        self._lock.release(force=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_in_use(folder: str | os.PathLike) -> dict | None:
    """The holder (owner record, ``{}`` when none was written) of ``folder``'s session lock when a session
    holds it now, else None. Never waits and never creates the folder. It probes by taking the lock for a
    moment: a session opened at that very moment is refused (for reports and tests, not as a guard)."""
    folder = Path(folder)
    if not (folder / LOCK_NAME).exists():
        return None
    probe = FolderLock(folder)
    try:
        probe._lock.acquire(timeout=0)
    except filelock.Timeout:
        return read_owner(folder) or {}
    probe._lock.release(force=True)
    return None


def refuse_if_held_elsewhere(folder: str | os.PathLike) -> None:
    """Raise :class:`~samtrack.errors.SessionInUseError` when a session of another process holds ``folder``
    (this process's own sessions pass: a session opening its video calls this under its own lock). For a
    caller about to replace a shared part of a session folder without being a session (the frame cache
    rebuilt for other reader options). Probes like :func:`folder_in_use`."""
    holder = folder_in_use(folder)
    if holder is None or (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()):
        return
    raise SessionInUseError(in_use_message(Path(folder), holder), holder=holder)


def read_owner(folder: str | os.PathLike) -> dict:
    """The owner record of ``folder`` (pid, host, command, since: epoch s, purpose), ``{}`` when absent or
    unreadable (a crash between lock and record, or a stale record: only a description)."""
    try:
        d = json.loads((Path(folder) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _write_owner(folder: Path, purpose: str) -> None:
    rec = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
           "since": time.time(), "purpose": purpose}
    tmp = folder / f".{OWNER_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, folder / OWNER_NAME)


def in_use_message(folder: str | os.PathLike, owner: dict, *, advice: str | None = None) -> str:
    """The :class:`~samtrack.errors.SessionInUseError` message for ``folder`` held by ``owner`` (an owner
    record, ``{}`` when unknown): who holds it, then what to do (``advice`` in the caller's terms, e.g. a batch
    row's, instead of the default)."""
    pid, host = owner.get("pid"), owner.get("host")
    since = owner.get("since")
    when = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
            if isinstance(since, (int, float)) else "")
    if pid == os.getpid() and host == socket.gethostname():
        who = f"another session of this process ({owner.get('purpose') or 'a samtrack session'}{when})"
        todo = "close that session first, or keep using it"
    elif pid is not None:
        cmd = owner.get("command") or owner.get("purpose") or "samtrack"
        who = f"process {pid} on {host or 'another host'}{when}: {cmd}"
        todo = "wait for it to finish or stop it, or open another work folder"
    else:
        who = "another samtrack session"
        todo = "wait for it to finish or stop it, or open another work folder"
    if advice is not None:
        return f"{folder} is in use by {who}: {advice}"
    return (f"{folder} is in use by {who}. Two sessions writing one folder would overwrite each other's "
            f"prompts and results: {todo}")
