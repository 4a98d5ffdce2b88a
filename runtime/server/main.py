"""`exaone-edge serve`: load the bundle once, bind (loopback by default), run uvicorn until interrupted.

If the engine's decode thread dies, /health turns 503 and the server exits non-zero rather than
restart the thread: the llama.cpp context it owned is in an unknown state and only a fresh process
is known good (vLLM exits on engine death for the same reason); a supervisor restarts it.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from exaone_edge.errors import InputError
from exaone_edge.runtime.server.connections import protocol_with_header_timeout
from exaone_edge.runtime.server.errors import ServerStopped
from exaone_edge.runtime.server.settings import ServerSettings


def serve(bundle_dir: Path | str, settings: ServerSettings) -> None:
    import uvicorn

    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.server.app import create_app

    for directory in settings.allow_dir:
        if not directory.is_dir():
            raise InputError("--allow-dir is not a directory", path=directory)
    engine = Engine.load(bundle_dir, settings.engine)
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
            sys.stderr.write(f"warning: listening on {settings.host} without an API key (--api-key); only IP addresses "
                             "and localhost are served as Host names (--allow-host for others)\n")
        address = f"[{settings.host}]" if ":" in settings.host else settings.host
        vision = "with vision" if engine.vision is not None else "text only"
        sys.stderr.write(
            f"serving {app.model_id} ({vision}, context {engine.n_ctx}, {engine.parallel} parallel) "
            f"on http://{address}:{port}/v1\n"
        )
        sys.stderr.flush()
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                http=protocol_with_header_timeout(settings.header_timeout_s),
                                limit_concurrency=settings.max_connections)
        server = uvicorn.Server(config)
        threading.Thread(target=_stop_on_failure, args=(engine, server), name="exaone-edge-watchdog", daemon=True).start()
        server.run(sockets=[sock])
        if engine.failure is not None:
            raise ServerStopped(
                "the engine's decode thread died (traceback above); the server stopped so that it can be restarted",
                fix="Restart it (a supervisor such as systemd or a container restart policy does this), and report the traceback.",
            )
    finally:
        engine.close()


def _stop_on_failure(engine, server) -> None:
    while not server.should_exit:
        if engine.wait_failure(timeout=1.0) is not None:
            sys.stderr.write("error: the decode thread died; /health answers 503 and the server is stopping\n")
            server.should_exit = True
            return
