"""``fwdproxy health``: ask a running proxy on this machine whether it is healthy; exit 0 or 1.

This module owns the health probe a container runtime or an orchestrator runs
next to the proxy (Docker HEALTHCHECK, a Kubernetes exec probe). It sends
``GET /healthz`` in origin-form straight to the proxy's own port over loopback,
never through HTTP_PROXY and friends: the question is whether *this* proxy
answers, not whether some other one does. Healthy means a 200 whose JSON says
``"status": "ok"``; a proxy that is draining for shutdown says ``"stopping"``
and counts as unhealthy, so a load balancer stops sending it new clients.
Exit statuses follow Docker's HEALTHCHECK contract: 0 healthy, 1 unhealthy.
``cli`` registers it with ``add_parser`` and calls ``run``.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import sys
from collections.abc import Sequence

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
# How a wildcard listen address is reached from the same machine.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "health", help="check that a proxy on this machine answers GET /healthz (exit 0 or 1)",
        description="Send GET /healthz to a running fwdproxy on this machine, directly (proxy "
                    "environment variables are ignored), print its status and exit 0 if it is "
                    "healthy, 1 if not. Suits a container HEALTHCHECK or an exec probe.")
    p.add_argument("--host", default=probe_host(os.environ.get("FWDPROXY_HOST", "")),
                   help="address of the proxy (default: loopback, or FWDPROXY_HOST when that is "
                        "a specific address; now %(default)s)")
    p.add_argument("--port", type=int, default=os.environ.get("FWDPROXY_PORT", "8080"),
                   help="port of the proxy (default FWDPROXY_PORT, else 8080; now %(default)s)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="seconds to connect and read the answer (default %(default)s)")
    return p


def probe_host(listen_host: str) -> str:
    """Where to reach a proxy listening on ``listen_host`` from this machine."""
    if listen_host in _WILDCARDS:
        return _WILDCARDS[listen_host]
    try:
        if ipaddress.ip_address(listen_host).is_unspecified:  # e.g. "::0"
            return "::1"
    except ValueError:
        pass  # a name such as "localhost": connect to it as given
    return listen_host


def run(ns: argparse.Namespace) -> int:
    try:
        status, body = _get_healthz(ns.host, ns.port, ns.timeout)
    except (OSError, http.client.HTTPException) as exc:
        print(f"fwdproxy health: unhealthy: no answer from {_where(ns)}: {str(exc) or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_UNHEALTHY
    verdict = _verdict(status, body)
    if verdict:
        print(f"fwdproxy health: unhealthy: {_where(ns)} {verdict}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(body.decode("utf-8").strip())
    return EXIT_HEALTHY


def _get_healthz(host: str, port: int, timeout: float) -> tuple[int, bytes]:
    # http.client connects where it is told: unlike urllib it never reads HTTP_PROXY.
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read(65536)
    finally:
        conn.close()


def _verdict(status: int, body: bytes) -> str | None:
    """Why an answer means unhealthy, or None when it means healthy."""
    if status != 200:
        return f"answered {status}"
    try:
        state = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return "answered 200 without a JSON status object"
    return None if state == "ok" else f"reports status {state!r}"


def _where(ns: argparse.Namespace) -> str:
    host = f"[{ns.host}]" if ":" in ns.host else ns.host
    return f"http://{host}:{ns.port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy.server.health [flags]``: ``fwdproxy health`` for the image's HEALTHCHECK."""
    parser = argparse.ArgumentParser(prog="fwdproxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["health", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
