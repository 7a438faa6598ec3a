"""``fwdproxy ui FILE.sqlite`` (a saved capture in the browser) and the pieces ``fwdproxy --ui`` uses.

The page gets its own port (8081 by default), never the proxy's. Startup
prints its URL with the token, as Jupyter does; the token is new every run.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..record.store import StoreError
from .app import UiServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("ui", prog="fwdproxy ui", help="open a recording in the browser",
                                   description="Serve the traffic page over a recording made with "
                                               "`fwdproxy --record FILE.sqlite` (also while it records).")
    parser.add_argument("store", metavar="FILE.sqlite")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s; another address is reachable "
                             "from other machines: the token still guards it)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default %(default)s; 0: any free)")
    return parser


def run(ns: argparse.Namespace) -> int:
    try:
        page = UiServer(ns.store, host=ns.host, port=ns.port, live=False)
    except StoreError as exc:
        print(f"fwdproxy ui: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fwdproxy ui: cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with page:
        if page.exposure_warning:
            print(f"fwdproxy: {page.exposure_warning}", file=sys.stderr)
        print(f"fwdproxy: traffic page for {ns.store} at {page.url}", file=sys.stderr, flush=True)
        stop.wait()
    return 0


@contextlib.contextmanager
def scratch_store() -> Iterator[Path]:
    """A store path in a private temporary folder, removed with what is in it at the end.

    ``fwdproxy --ui`` without ``--record`` records here: like mitmweb, the page
    shows traffic at once, and nothing is left behind unless ``--record`` asks.
    """
    with tempfile.TemporaryDirectory(prefix="fwdproxy-ui-") as folder:
        yield Path(folder) / "flows.sqlite"
