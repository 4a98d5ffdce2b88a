"""`exaone-edge serve`: an OpenAI-compatible HTTP server over one Engine. Never imports torch or transformers.

    app = create_app(engine, ServerSettings(api_key="..."))   # any ASGI server
    serve(bundle_dir, ServerSettings.resolve({"port": 8000}))  # uvicorn, what the CLI runs
"""

from exaone_edge.runtime.server.app import create_app
from exaone_edge.runtime.server.main import serve
from exaone_edge.runtime.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
