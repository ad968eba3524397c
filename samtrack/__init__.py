"""samtrack: track and segment objects through long videos with SAM2, at a cost
that does not grow with video length.

Public entry points: :func:`open_video` (lazy frame access) and, once a model
is installed, :func:`open_session` (tracking); :func:`connect` drives sessions on a
``samtrack serve`` server (``pip install samtrack[server]``).
"""
__version__ = "0.1.0"


def open_video(source, **kwargs):
    """See :func:`samtrack.io.open_video`."""
    from samtrack.io import open_video as _open

    return _open(source, **kwargs)


open_video.__doc__ = "Open any video-like source lazily; see samtrack.io.open_video."


def open_session(source, **kwargs):
    """Open a source for tracking; see :func:`samtrack.session.open_session`."""
    from samtrack.session import open_session as _open

    return _open(source, **kwargs)


def connect(url: str, **kwargs):
    """Connect to a ``samtrack serve`` server; ``client.open_session(video, ...)`` then gives a
    :class:`~samtrack.remote.client.RemoteSession` with the methods of a local session. See
    :func:`samtrack.remote.client.connect` (``token=``, ``token_file=``, ``timeout=``, ``reconnect_timeout=``).

    Raises :class:`~samtrack.errors.ServerUnavailableError` when nothing answers at ``url``,
    :class:`~samtrack.errors.AuthenticationError` for a missing or wrong token."""
    from samtrack.remote.client import connect as _connect

    return _connect(url, **kwargs)
