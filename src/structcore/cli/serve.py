"""``structcore serve``: the HTTP API and the inspection page over a fitted model."""

from __future__ import annotations

import ipaddress
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

from ..detector import Detector
from ..errors import ConfigError
from .options import add_engine_options, add_runtime_options, positive_float, positive_int, runtime_from_args

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
    g = add_engine_options(p, "Ray Serve runs --replicas copies of the app behind one endpoint")
    g.add_argument("--replicas", type=positive_int, default=2, help="with --engine ray: replicas, each loading the "
                   "model (default %(default)s)")
    g.add_argument("--cpus-per-replica", type=positive_float, default=1.0,
                   help="with --engine ray: CPUs each replica holds, fractions allowed (default %(default)s)")
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
    url = f"http://{args.host}:{args.port}"
    options = dict(queue_size=args.queue_size, token=token, max_body_bytes=args.max_body_mb * 1024 * 1024,
                   max_pixels=args.max_pixels, max_batch=args.max_batch)
    if args.engine == "ray":
        return _serve_on_ray(args, url, options)
    detector = Detector.load(args.model, **runtime_from_args(args))
    app = create_app(detector, **options, threads=args.threads,
                     on_ready=lambda: print(f"structcore serve: model {args.model} loaded and warm; ready at {url}",
                                            file=sys.stderr, flush=True))
    serve(app, args.host, args.port)
    return 0


def replica_app(model: str, runtime: dict, options: dict):
    """The app of one Ray Serve replica: the model loaded in the replica's own process."""
    from ..service import create_app

    return create_app(Detector.load(model, **runtime), **options)


def _serve_on_ray(args, url: str, options: dict) -> int:
    from ..distributed import serve_ray

    threads = args.threads or max(1, math.floor(args.cpus_per_replica))
    factory = partial(replica_app, str(Path(args.model).absolute()), runtime_from_args(args),
                      {**options, "threads": threads})
    serve_ray(factory, replicas=args.replicas, cpus_per_replica=args.cpus_per_replica, address=args.address,
              host=args.host, port=args.port)
    print(f"structcore serve: {args.replicas} Ray Serve replicas of model {args.model} ready at {url}",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()
        raise
