"""`exaone-edge serve`: an OpenAI-compatible HTTP server over one Engine. Never imports torch or transformers.

    app = create_app(engine, ServerSettings(api_key="..."))   # any ASGI server
    serve(bundle_dir, ServerSettings.resolve({"port": 8000}))  # uvicorn, what the CLI runs

The HTTP stack (starlette, uvicorn) loads only when the app or `serve` is asked for, so the settings model can be
read (the CLI makes its flags from it) where only the core is installed.
"""

from exaone_edge.runtime.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from exaone_edge.runtime.server.app import create_app

        return create_app
    if name == "serve":
        from exaone_edge.runtime.server.main import serve

        return serve
    raise AttributeError(name)
