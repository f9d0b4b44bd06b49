"""``structcore serve``: the HTTP API and the inspection page over a fitted model."""

from __future__ import annotations

import ipaddress
import os
import sys

from ..detector import Detector
from ..errors import ConfigError
from .options import add_runtime_options, positive_int, runtime_from_args

TOKEN_VARIABLE = "STRUCTCORE_API_TOKEN"


def register(sub):
    p = sub.add_parser("serve", help="serve a fitted model: HTTP API and web page",
                       description=f"Serve a fitted model over HTTP: the page at /, the API under /v1, docs at "
                       f"/docs. With ${TOKEN_VARIABLE} set, every path but /healthz and the page's files needs "
                       "'Authorization: Bearer <token>'.")
    p.add_argument("--model", required=True, help="model folder written by `structcore fit`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads for inference (default: the cores this process may use)")
    p.add_argument("--queue-size", type=positive_int, default=4,
                   help="requests that may wait for the model; more get 503 with Retry-After (default %(default)s)")
    p.add_argument("--max-body-mb", type=positive_int, default=20, help="request body limit in MB (default %(default)s)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000,
                   help="decoded pixels per image (default %(default)s); larger images get 413")
    p.add_argument("--max-batch", type=positive_int, default=16, help="images per batch request (default %(default)s)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args) -> int:
    try:
        from ..service import create_app, serve
    except ImportError as e:
        raise ConfigError(f"structcore serve needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'structcore[serve]'") from None
    token = os.environ.get(TOKEN_VARIABLE) or None
    if token is None and not _is_loopback(args.host):
        print(f"structcore: warning: serving on {args.host} without a token: anyone who can reach it may use "
              f"the model; set {TOKEN_VARIABLE}", file=sys.stderr)
    detector = Detector.load(args.model, **runtime_from_args(args))
    url = f"http://{args.host}:{args.port}"
    app = create_app(detector, queue_size=args.queue_size, token=token, max_body_bytes=args.max_body_mb * 1024 * 1024,
                     max_pixels=args.max_pixels, max_batch=args.max_batch, threads=args.threads,
                     on_ready=lambda: print(f"structcore serve: model {args.model} loaded and warm; ready at {url}",
                                            file=sys.stderr, flush=True))
    serve(app, args.host, args.port)
    return 0
