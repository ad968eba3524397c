"""``samtrack serve``: remote sessions over HTTP (docs/remote.md).

A frontend like the CLI and the viewer: FastAPI routes around the session API. The model, the video, the
frame cache and the memory stay on the server; clients (:mod:`samtrack.remote.client`) get compact
results (:mod:`samtrack.remote.wire`). Needs the ``server`` extra (``pip install "samtrack[server]"``);
the core packages never import this one.

``create_app(ServerConfig(roots=[...], token=...))`` gives the application; ``samtrack serve`` runs it
with uvicorn.
"""
from __future__ import annotations

from samtrack.server.app import ServerConfig, create_app, status_of

__all__ = ["ServerConfig", "create_app", "status_of"]
