"""HTTP server of cogview: ``create_app(pipeline)`` builds a FastAPI app with a JSON API and a web page.

Needs the ``[server]`` extra (FastAPI, uvicorn). Only ``cogview serve`` imports this package; the
library never does. :func:`~cogview.server.run.serve` loads a model and runs the app with uvicorn.
"""

from cogview.server.app import create_app

__all__ = ["create_app"]
