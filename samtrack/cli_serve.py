"""``samtrack serve``: run the remote-session server (docs/remote.md). Only parses arguments; FastAPI and
uvicorn are imported when the command runs, so the rest of the CLI starts without them."""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import List, Optional

import typer

from samtrack.errors import InvalidOptionError

log = logging.getLogger("samtrack.server")
DEFAULT_TOKEN_FILE = Path("~/.config/samtrack/token")


def read_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, or a new one (``secrets.token_urlsafe(32)``) written there with mode 0600
    (its folder 0700). Returns (token, created). Raises :class:`InvalidOptionError` for an unreadable or
    empty file."""
    path = path.expanduser()
    if path.exists():
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise InvalidOptionError(f"--token-file {path} cannot be read ({e.strerror}): fix its permissions or "
                                     "name another file") from None
        if not token:
            raise InvalidOptionError(f"--token-file {path} is empty: remove it and a new token is made")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            log.warning("the token file %s can be read by other users: chmod 600 %s", path, path)
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here so that a port in use is a clear message, not a traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InvalidOptionError(f"--host {host}: not an address this machine knows ({e.strerror})") from None
    family, type_, proto, _, addr = infos[0]
    # created as TCP (proto from getaddrinfo, not 0): asyncio turns TCP_NODELAY on only for sockets it sees as
    # TCP; without it Nagle + delayed ACKs held every reply ~45 ms on loopback (measured: 48.5 -> ~1 ms)
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InvalidOptionError(f"cannot listen on {host}:{port} ({e.strerror}): another program uses the port, "
                                 "or the address is not this machine's; choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(root: List[Path] = typer.Option(..., "--root", help="folder clients may open videos and checkpoints "
                                          "from and write sessions to (repeat for several)"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but loopback "
                                   "exposes the server: see docs/remote.md (SSH tunnel, TLS proxy)"),
          port: int = typer.Option(8765, "--port", min=1, max=65535, help="TCP port"),
          token_file: Path = typer.Option(DEFAULT_TOKEN_FILE, "--token-file", help="the bearer token clients "
                                          "send; created (mode 0600) when missing"),
          sessions: Optional[Path] = typer.Option(None, "--sessions", help="session folders, uploads and id "
                                                  "records (default <first root>/samtrack-sessions)"),
          device: str = typer.Option("auto", "--device", help="compute device: auto, cpu, cuda, cuda:N or mps"),
          max_upload_mb: float = typer.Option(4096, "--max-upload-mb", help="largest upload accepted, MiB"),
          max_sessions: int = typer.Option(8, "--max-sessions", help="sessions open at once (the least recently "
                                           "used idle one is closed; its folder stays)"),
          idle_timeout: float = typer.Option(1800, "--idle-timeout", help="seconds before an idle session is "
                                             "closed (reopened on its next request); 0: never"),
          rate_limit: float = typer.Option(100, "--rate-limit", help="requests per second per client address "
                                           "(bursts of twice that); 0: no limit")) -> None:
    """Serve remote sessions: the model, video and memory stay here; clients connect with samtrack.connect."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        import uvicorn

        from samtrack.server import ServerConfig, create_app
    except ImportError as e:
        raise InvalidOptionError(f"samtrack serve needs the server extra ({e.name} is missing): "
                                 "pip install 'samtrack[server]'") from None
    for r in root:
        if not r.expanduser().is_dir():
            raise InvalidOptionError(f"--root {r} is not a folder: create it or name an existing one")
    token, created = read_or_create_token(token_file)
    config = ServerConfig(roots=tuple(root), token=token, sessions_dir=sessions, device=device,
                          max_upload_bytes=int(max_upload_mb * 2**20), max_sessions=max_sessions,
                          idle_timeout=idle_timeout, rate_limit=rate_limit)
    if not _is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] listening on {host}, not only this machine: the token travels "
                      "in plain HTTP; use an SSH tunnel or a TLS proxy instead (docs/remote.md, 'Exposing a "
                      "server safely')", highlight=False)
    sock = _bind(host, port)
    app = create_app(config)
    logging.getLogger("samtrack").setLevel(logging.INFO)
    where = f"[{host}]" if ":" in host else host
    console.print(f"samtrack serve on http://{where}:{sock.getsockname()[1]} ; token "
                  f"{'written to' if created else 'in'} {token_file.expanduser()} ; roots "
                  f"{', '.join(str(r) for r in root)}", highlight=False, soft_wrap=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10,
                                           access_log=False, lifespan="on"))
    server.run(sockets=[sock])
