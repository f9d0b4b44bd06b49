"""``structcore serve``: the HTTP API and the inspection page over a fitted model (optional extra ``serve``).

``create_app(model)`` builds the FastAPI app; ``serve(app, host, port)`` runs it; ``background_server(app)``
runs it on a free loopback port in a thread.
"""

from .app import create_app, host_cores
from .server import background_server, serve

__all__ = ["background_server", "create_app", "host_cores", "serve"]
