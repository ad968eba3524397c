"""The widget against a ``samtrack serve`` server: a server field, Open on the server, models the server has.

The widget drives a :class:`~samtrack.remote.client.RemoteSession` through the same session interface
(:class:`samtrack.session.protocol.Session`) as a local one; only opening and closing differ (here).
"""
from __future__ import annotations

import logging
import os

from samtrack.errors import SamtrackError

log = logging.getLogger("samtrack.viewer")

SERVER_TIP = ("a samtrack serve URL (e.g. http://127.0.0.1:8765 through an SSH tunnel); empty: work on this "
              "machine. The token is read from the token file the server wrote (--token-file)")


def open_remote(server: str, source, *, token: str | None = None, token_file=None, model: str | None = None,
                checkpoint=None, image_size: int | None = None, workdir=None, upload: bool = False,
                reset: bool = False, **video_options):
    """(client, remote session) for ``source`` on ``server``.

    ``source``: a path on the server, under one of its roots (``samtrack serve --root``); with ``upload``
    a file on this machine, sent first (cached there by content). Errors are the typed ones of
    :mod:`samtrack.errors` (AuthenticationError, ForbiddenPathError, ServerUnavailableError, ...)."""
    import samtrack

    client = samtrack.connect(server, token=token, token_file=token_file)
    try:
        video = client.upload(source) if upload else os.fspath(source)
        session = client.open_session(video, model=model, checkpoint=checkpoint, image_size=image_size,
                                      workdir=workdir, reset=reset, **video_options)
        return client, session
    except BaseException:
        client.close()
        raise


class RemoteInput:
    """Mixin of :class:`~samtrack.viewer._widget.SamtrackWidget`: the server field and remote opening."""

    _client = None

    @property
    def remote(self) -> bool:
        """True when connected to a server: the shown session (if any) lives there."""
        return self._client is not None

    def connect_server(self, url: str, *, token: str | None = None, token_file=None) -> bool:
        """Use the server at ``url`` for the next Open (and the model list); '' goes back to this machine.
        Says what went wrong in the status line; True when connected."""
        import samtrack

        if self.frames is not None:  # the shown video stays where it is (a session never moves machines)
            self._say("this widget already shows a video: use the server in a new window "
                      "(samtrack view --server URL PATH)")
            return False
        self.server_edit.setText(url or "")
        if not url:
            self._drop_client()
            self._say("working on this machine")
            return True
        try:
            client = samtrack.connect(url, token=token, token_file=token_file)
        except SamtrackError as e:
            self._say(f"error: {e}")
            return False
        self._drop_client()
        self._client = client
        info = client.server_info
        self._say(f"connected to {url} ({info.get('device', '?')}; models: {', '.join(info.get('models', [])) or '?'})")
        return True

    def open_remote(self, video: str, *, model: str | None = None, image_size: int | None = None, **kw) -> None:
        """Open ``video`` (a path under one of the server's roots) on the connected server in this widget."""
        if self._client is None:
            self._say("connect to a server first (the server field)")
            return
        if self.frames is not None:
            self._say("this widget already shows a video: open another in a new window")
            return
        try:
            self.session = self._client.open_session(video, model=model or getattr(self, "_next_model", None),
                                                     image_size=image_size, **kw)
        except SamtrackError as e:
            self._say(f"error: {e}")
            return
        self.results, self.frames = self.session.results, self.session.frames
        self._open_options = {"image_size": image_size, **kw}
        self._remote_video = video
        self._attach()

    def _reopen_remote(self, name: str) -> bool:
        """The model picker on a remote session: the server opens the same video with ``name``."""
        frame = self.frame
        try:
            opened = self._client.open_session(self._remote_video, model=name, **self._open_options)
        except SamtrackError as e:
            self._say(f"error: {e}")
            self._select_model(self.current_model)
            return False
        client, self._client = self._client, None  # closing the old session must not close the client
        self.close_session()
        self._client = client
        self._detach()  # (close_session left the layers: the widget did not know it was remote just then)
        self.session, self.results, self.frames = opened, opened.results, opened.frames
        self._attach()
        self.goto(frame)
        self._say(f"reopened with {name} on the server in {self.session.workdir}")
        return True

    def _open_server_dialog(self) -> None:
        from qtpy.QtWidgets import QInputDialog

        url = self.server_edit.text().strip()
        if url and (self._client is None or self._client.url != url.rstrip("/")):
            if not self.connect_server(url, token_file=self.token_edit.text().strip() or None):
                return
        path, ok = QInputDialog.getText(self, "Open on the server", "video path under one of the server's roots")
        if ok and path:
            self.open_remote(path, model=self.model_box.currentData())

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


__all__ = ["RemoteInput", "open_remote"]
