"""`exaone-edge serve`: load the bundle once, bind (loopback by default), run uvicorn until interrupted."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from exaone_edge.errors import InputError
from exaone_edge.runtime.server.settings import ServerSettings


def serve(bundle_dir: Path | str, settings: ServerSettings) -> None:
    import uvicorn

    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.server.app import create_app

    for directory in settings.allow_dir:
        if not directory.is_dir():
            raise InputError("--allow-dir is not a directory", path=directory)
    engine = Engine.load(bundle_dir, **settings.engine_options())
    try:
        app = create_app(engine, settings)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))  # bound here so port 0 can be reported before serving
        except OSError as exc:
            sock.close()
            raise InputError(f"cannot listen on {settings.host}:{settings.port} ({exc.strerror})") from None
        port = sock.getsockname()[1]
        if not settings.loopback and settings.api_key is None:
            sys.stderr.write(f"warning: listening on {settings.host} without an API key (--api-key)\n")
        address = f"[{settings.host}]" if ":" in settings.host else settings.host
        vision = "with vision" if engine.vision is not None else "text only"
        sys.stderr.write(
            f"serving {app.model_id} ({vision}, context {engine.n_ctx}, {engine.parallel} parallel) "
            f"on http://{address}:{port}/v1\n"
        )
        sys.stderr.flush()
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
