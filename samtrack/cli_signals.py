"""How the ``samtrack`` command stops on Ctrl-C and SIGTERM: the session closed, what is queued
written, exit status 130 / 143 (128 + the signal's number, as a shell reports it) and a one-line
note that says what was kept. Used by :func:`samtrack.cli.main`."""
from __future__ import annotations

import signal
import sys
import threading

from rich.console import Console

console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: stops a command as Ctrl-C does (sessions closed, what is
    queued written), so every path that saves work on Ctrl-C saves it on SIGTERM too."""


terminated: list[int] = []  # the signal, once received (the exception may come back wrapped or re-raised)
OWN_LIFECYCLE = {"serve", "view"}  # uvicorn and Qt stop these on SIGTERM themselves

# what the note adds for a command whose finished work is kept and picked up by running it again
# (not `models download`: huggingface_hub removes an interrupted download's file; it starts again)
RESUMES = {
    "track": "finished work is saved; run the same command again to resume",
    "batch": "finished videos and frames are saved; run the same command again to resume",
    "cache": "what was cached is kept; run the same command again to finish",
}


def command_of(argv: list) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), or None."""
    return next((str(a) for a in argv if not str(a).startswith("-")), None)


def _on_sigterm(signum, frame) -> None:
    """The first SIGTERM raises Terminated; later ones are only recorded (a second ``kill`` while the
    session closes must not cut the close short)."""
    first = not terminated
    terminated.append(signum)
    if first:
        raise Terminated()


def stop_on_sigterm(argv: list) -> object:
    """SIGTERM (``kill PID``, a cluster scheduler's time limit or ``scancel``, a container stop) handled
    as Ctrl-C: its default ends Python at once, with no session closed and the frames tracked since
    the last write lost. Left alone where SIGTERM is ignored or already handled, off the main thread,
    and for ``serve`` / ``view``. Returns the handler to put back (None: nothing was changed)."""
    if command_of(argv) in OWN_LIFECYCLE or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    terminated.clear()
    return signal.signal(signal.SIGTERM, _on_sigterm)


def record_sigterm_only(signum, frame) -> None:
    """The SIGTERM handler once the command has returned: noted, never raised into the exit path."""
    terminated.append(signum)


def stopped(argv: list) -> None:
    """Exit after Ctrl-C (130) or SIGTERM (143) with one line: which signal, and for a command whose
    work is kept (``RESUMES``) what was kept and that running it again resumes."""
    what, rc = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
    kept = RESUMES.get(command_of(argv) or "")
    console.print(f"[yellow]{what}" + (f": {kept}" if kept else "") + "[/yellow]")
    sys.exit(rc)
