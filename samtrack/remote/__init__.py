"""Remote sessions, client side: :func:`connect` to a ``samtrack serve`` server and drive its sessions with
the same interface as a local one (:class:`samtrack.session.protocol.Session`). Needs ``samtrack[server]``.

The wire format is :mod:`samtrack.remote.wire`; the protocol is described in ``docs/remote.md``.
"""
