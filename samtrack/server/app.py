"""The FastAPI application of ``samtrack serve``: configuration, the guard every request passes (rate
limit, then token), and the error bodies (``{"error": {"type", "message"}}``, statuses as docs/remote.md
gives them)."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from samtrack import errors as E
from samtrack.io.export import ExportError
from samtrack.remote.wire import WireError, error_body
from samtrack.server.manager import SessionManager
from samtrack.server.security import RateLimiter, Roots, check_token

log = logging.getLogger(__name__)

# checked in order: the first class an error is an instance of gives its status; other samtrack errors 400
STATUSES: tuple[tuple[type, int], ...] = (
    (E.AuthenticationError, 401), (E.ForbiddenPathError, 403), (E.UploadTooLargeError, 413),
    (E.RateLimitedError, 429), (E.SessionBusyError, 409), (E.SessionInUseError, 409), (E.NoPromptsError, 409),
    (E.UnreachableFramesError, 409),
    (E.JobMismatchError, 409), (ExportError, 409), (E.CancelledError, 409), (E.UnknownObjectError, 404),
    (E.SessionClosedError, 404), (E.CheckpointError, 503), (E.OutOfMemoryError, 503),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error raised while serving a request (5xx only for server faults)."""
    for cls, code in STATUSES:
        if isinstance(exc, cls):
            return code
    return 400 if isinstance(exc, E.SamtrackError) else 500


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs. ``roots``: folders clients may name videos and checkpoints under (a relative
    path is looked for in each, in order); ``token``: the bearer token; ``sessions_dir``: where session
    folders, uploads and the id records go (default ``<first root>/samtrack-sessions``); ``device``:
    ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``max_upload_bytes``; ``max_sessions``: open at
    once (the least recently used idle one is closed, its folder kept); ``idle_timeout``: seconds before
    an idle session is closed (0: never); ``rate_limit``: requests per second per client address (0:
    no limit). Invalid values raise :class:`~samtrack.errors.InvalidOptionError`."""

    roots: tuple[Path, ...]
    token: str
    sessions_dir: Path | None = None
    device: str = "auto"
    max_upload_bytes: int = 4 << 30
    max_sessions: int = 8
    idle_timeout: float = 1800.0
    rate_limit: float = 100.0

    def __post_init__(self):
        roots = tuple(Path(r).expanduser() for r in self.roots)
        object.__setattr__(self, "roots", roots)
        if not roots:
            raise E.InvalidOptionError("no --root: give at least one folder the server may open videos from")
        for r in roots:
            if not r.is_dir():
                raise E.InvalidOptionError(f"--root {r} is not a folder: create it or name an existing one")
        if not self.token or len(self.token) < 16:
            raise E.InvalidOptionError("the token is empty or shorter than 16 characters: remove the token file "
                                       "and let the server create one")
        for name, v, lo in (("--max-upload-mb", self.max_upload_bytes, 1), ("--max-sessions", self.max_sessions, 1),
                            ("--idle-timeout", self.idle_timeout, 0), ("--rate-limit", self.rate_limit, 0)):
            if v < lo:
                raise E.InvalidOptionError(f"{name} {v}: give a number of at least {lo}")

    @property
    def sessions(self) -> Path:
        """The folder of session folders, uploads and id records (``sessions_dir``, else
        ``<first root>/samtrack-sessions``)."""
        return Path(self.sessions_dir).expanduser() if self.sessions_dir else self.roots[0] / "samtrack-sessions"


@dataclass
class ServerState:
    """What the routes share: the configuration, the path rules, the sessions."""

    config: ServerConfig
    roots: Roots
    manager: SessionManager
    limiter: RateLimiter


def create_app(config: ServerConfig) -> FastAPI:
    """The application (run it with uvicorn; ``samtrack serve`` does). Creates the sessions folder."""
    from samtrack.server.routes import make_router

    sessions = config.sessions
    sessions.mkdir(parents=True, exist_ok=True)
    roots = Roots(config.roots, extra=[sessions])
    state = ServerState(config, roots,
                        SessionManager(roots, Path(os.path.realpath(sessions)), device=config.device,
                                       max_sessions=config.max_sessions, idle_timeout=config.idle_timeout),
                        RateLimiter(config.rate_limit))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.manager.close_all()

    app = FastAPI(title="samtrack", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, limiter=state.limiter, token=config.token)
    app.state.samtrack = state
    app.include_router(make_router(state))
    _handlers(app)
    return app


class Guard:
    """Every HTTP request, before routing and before its body is read: the rate limit (per client
    address), then the token. A refusal is the usual error body (429 / 401). Plain ASGI, so streaming
    responses and disconnects pass through untouched."""

    def __init__(self, app, *, limiter: RateLimiter, token: str):
        self.app, self.limiter, self.token = app, limiter, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            try:
                client = scope.get("client")
                self.limiter.check(client[0] if client else "?")
                headers = dict(scope.get("headers") or ())
                auth = headers.get(b"authorization")
                check_token(auth.decode("latin-1") if auth is not None else None, self.token)
            except E.SamtrackError as e:
                await error_response(e)(scope, receive, send)
                return
        else:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001  (a server fault: answered here, the connection stays usable)
            # Starlette's ServerErrorMiddleware answers too but then re-raises, and uvicorn drops the
            # connection: the client's next request on it (keep-alive) failed with a reset
            if started:
                raise
            await error_response(e, 500)(scope, receive, send)


def error_response(exc: BaseException, status: int | None = None) -> JSONResponse:
    """The JSON error answer for ``exc`` (``{"error": {"type", "message"}}``, see
    :func:`~samtrack.remote.wire.error_body`) with ``status`` (default :func:`status_of`); a 5xx is logged, with
    its traceback unless it is a typed error."""
    status = status or status_of(exc)
    if status >= 500 and isinstance(exc, E.SamtrackError):  # a typed error (no checkpoint, out of memory): said
        log.warning("%s: %s", type(exc).__name__, exc)   # to the client; no traceback in the server's log
    elif status >= 500:
        log.error("server fault: %s", exc, exc_info=exc)
    return JSONResponse(error_body(exc), status_code=status)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(E.SamtrackError)
    async def _samtrack(request, exc):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errs = exc.errors()
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            return error_response(WireError(f"the request body is not JSON ({ctx.get('error', 'syntax error')}); "
                                            "send a JSON object"), 400)
        parts = []
        for e in errs[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return error_response(WireError("the request does not fit the protocol (docs/remote.md): "
                                        + "; ".join(parts)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        msg = f"{request.method} {request.url.path}: {exc.detail}" + (
            "; see docs/remote.md for the endpoints" if exc.status_code in (404, 405) else "")
        return JSONResponse({"error": {"type": "RemoteError", "message": msg}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _fault(request, exc):
        return error_response(exc, 500)
