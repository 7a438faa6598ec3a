"""Command line: flags and FWDPROXY_* environment variables -> Config -> a running ProxyServer.

``fwdproxy [serve] [flags]``; ``serve`` is the default subcommand. Every flag
can also be set as an environment variable named FWDPROXY_ plus the flag in
upper case (``--connect-timeout`` -> ``FWDPROXY_CONNECT_TIMEOUT``); a flag on
the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import LOG_FORMATS, LOG_LEVELS, Config
from .server import ProxyServer

log = logging.getLogger("fwdproxy")
_DEFAULTS = Config()
SUBCOMMANDS = ("serve",)


def _env(flag: str, default: Any) -> Any:
    return os.environ.get("FWDPROXY_" + flag.upper().replace("-", "_"), default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwdproxy",
        description="A forward HTTP/1.1 proxy with CONNECT tunnelling. Point clients at it with "
                    "HTTP_PROXY/HTTPS_PROXY=http://HOST:PORT. Every flag may also be given as an "
                    "environment variable FWDPROXY_<FLAG> (e.g. FWDPROXY_PORT=3128).")
    sub = parser.add_subparsers(dest="command", metavar="{serve}")
    serve = sub.add_parser("serve", prog="fwdproxy [serve]", description=parser.description,
                           help="run the proxy (the default)")
    serve.add_argument("--version", action="version", version=f"fwdproxy {__version__}")
    serve.add_argument("--host", default=_env("host", _DEFAULTS.host),
                       help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=_env("port", _DEFAULTS.port),
                       help="port to listen on; 0 picks a free one (default %(default)s)")
    serve.add_argument("--timeout", type=float, default=_env("timeout", _DEFAULTS.timeout),
                       help="seconds to wait for each read from an origin (default %(default)s)")
    serve.add_argument("--connect-timeout", type=float,
                       default=_env("connect-timeout", _DEFAULTS.connect_timeout),
                       help="seconds to wait for an origin to accept (default %(default)s)")
    serve.add_argument("--client-idle-timeout", type=float,
                       default=_env("client-idle-timeout", _DEFAULTS.client_idle_timeout),
                       help="seconds a kept-alive client may wait between requests "
                            "(default %(default)s)")
    serve.add_argument("--tunnel-idle-timeout", type=float,
                       default=_env("tunnel-idle-timeout", _DEFAULTS.tunnel_idle_timeout),
                       help="seconds a CONNECT tunnel may carry no bytes (default %(default)s)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower,
                       default=_env("log-level", _DEFAULTS.log_level),
                       help="info logs one line per exchange (default %(default)s)")
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       default=_env("log-format", _DEFAULTS.log_format),
                       help="text lines or JSON lines (default %(default)s)")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        args.insert(0, "serve")
    parser = build_parser()
    ns = parser.parse_args(args)
    try:
        return Config(host=ns.host, port=int(ns.port), timeout=float(ns.timeout),
                      connect_timeout=float(ns.connect_timeout),
                      client_idle_timeout=float(ns.client_idle_timeout),
                      tunnel_idle_timeout=float(ns.tunnel_idle_timeout),
                      log_level=ns.log_level, log_format=ns.log_format)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s"
                        if config.log_format == "text" else "%(message)s")
    threading.stack_size(512 * 1024)  # threads per connection: keep their stacks small
    try:
        server = ProxyServer(config)
    except OSError as exc:
        print(f"fwdproxy: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.set()
            # shutdown() waits for serve_forever, which runs on this very thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"fwdproxy {__version__} listening on {server.url}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    log.info("shutting down: waiting up to %gs for in-flight exchanges", config.shutdown_grace)
    server.drain(config.shutdown_grace)
    return 0
