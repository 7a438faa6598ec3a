"""``fwdproxy fetch``: one request through a proxy from the command line, in curl's spirit.

This module owns the subcommand's flags and output. It turns the flags into
a ProxyClient request, writes the body (with ``-i``, each response head too)
to stdout or a file, sends ``-v``'s log of the CONNECT exchange, requests and
redirect hops to stderr, and exits with curl's status numbers so scripts can
tell failures apart. ``cli`` registers it with ``add_parser`` and calls ``run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import BinaryIO

from .client import (
    ClientError,
    ClientTimeout,
    ConnectError,
    InvalidURL,
    ProxyClient,
    ProxyError,
    RedirectError,
    Response,
    Timeout,
    TLSError,
    TooManyRedirects,
)

# curl's exit statuses (man curl, "EXIT CODES"), most specific first.
EXIT_CODES: tuple[tuple[type[ClientError], int], ...] = (
    (InvalidURL, 3), (ClientTimeout, 28), (ConnectError, 7), (TLSError, 35), (ProxyError, 56),
    (TooManyRedirects, 47), (RedirectError, 1), (ClientError, 56),
)
EXIT_HTTP_ERROR = 22  # --fail and a status of 400 or more
EXIT_WRITE_ERROR = 23
EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fetch", help="send one request, through a proxy if one is set (like curl)",
        description="Send one HTTP request, through a forward proxy if one is set (-x, or "
                    "HTTP_PROXY/HTTPS_PROXY/NO_PROXY), and write the body to stdout. HTTPS goes "
                    "through a CONNECT tunnel. Exit status as curl's: 0 when a response arrived, "
                    "7 cannot connect, 28 timeout, 35 TLS, 47 too many redirects, 56 refused by "
                    "the proxy.")
    p.add_argument("url", help="http:// or https:// URL")
    p.add_argument("-x", "--proxy", metavar="PROXY",
                   help="proxy URL, http://[user:pass@]host:port (default: from the environment)")
    p.add_argument("--noproxy", metavar="LIST", help="hosts to reach directly, as NO_PROXY")
    p.add_argument("-p", "--proxytunnel", action="store_true",
                   help="tunnel plain http:// through CONNECT too")
    p.add_argument("-X", "--request", dest="method", metavar="METHOD",
                   help="request method (default GET, or POST with -d)")
    p.add_argument("-d", "--data", metavar="DATA",
                   help="request body; @FILE reads a file, @- stdin; implies POST")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                   help="extra request header (repeatable)")
    p.add_argument("-L", "--location", action="store_true", help="follow redirects")
    p.add_argument("--max-redirs", type=int, default=50, metavar="N",
                   help="most redirects to follow with -L (default %(default)s)")
    p.add_argument("--cacert", metavar="FILE", help="CA bundle to verify HTTPS targets against")
    p.add_argument("--compressed", action="store_true", help="ask for gzip/deflate and decode it")
    p.add_argument("-i", "--include", action="store_true", help="write response heads before the body")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log the CONNECT exchange, requests and redirect hops to stderr")
    p.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE instead of stdout")
    p.add_argument("-f", "--fail", action="store_true",
                   help="exit 22 without writing the body when the status is 400 or more")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to connect, CONNECT and handshake (default %(default)s)")
    p.add_argument("-m", "--max-time", type=float, metavar="SECONDS",
                   help="seconds for the whole transfer, redirects included")
    return p


def run(ns: argparse.Namespace) -> int:
    try:
        headers = [_header(line) for line in ns.header]
        body = _data(ns.data) if ns.data is not None else None
    except (ValueError, OSError) as exc:
        print(f"fwdproxy fetch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if body is not None and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl -d
    method = ns.method or ("POST" if body is not None else "GET")
    logger = logging.getLogger("fwdproxy.client")
    level, handler = logger.level, _verbose_handler(logger) if ns.verbose else None
    try:
        return _fetch(ns, method, headers, body)
    except ClientError as exc:
        print(f"fwdproxy fetch: {exc}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
    except ValueError as exc:  # a proxy URL or header value http.client refuses
        print(f"fwdproxy fetch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _fetch(ns: argparse.Namespace, method: str, headers: list[tuple[str, str]], body: bytes | None) -> int:
    read = ns.max_time if ns.max_time else 60.0
    timeout = Timeout(connect=ns.connect_timeout, read=read, total=ns.max_time)
    with ProxyClient(ns.proxy, ca_file=ns.cacert, timeout=timeout, follow_redirects=ns.location,
                     max_redirects=ns.max_redirs, no_proxy=ns.noproxy, tunnel_http=ns.proxytunnel,
                     decode_content=ns.compressed, debug=ns.verbose) as client, \
            client.stream(method, ns.url, body=body, headers=headers) as resp:
        if ns.fail and resp.status >= 400:
            print(f"fwdproxy fetch: the requested URL returned error: {resp.status}", file=sys.stderr)
            return EXIT_HTTP_ERROR
        try:
            _write(ns, resp)
        except OSError as exc:
            print(f"fwdproxy fetch: cannot write output: {exc}", file=sys.stderr)
            return EXIT_WRITE_ERROR
    return 0


def _write(ns: argparse.Namespace, resp: Response) -> None:
    out: BinaryIO = open(ns.output, "wb") if ns.output else sys.stdout.buffer
    try:
        if ns.include:
            for hop in [*resp.history, resp]:
                out.write(_head(hop))
        for chunk in resp:
            out.write(chunk)
        out.flush()
    finally:
        if ns.output:
            out.close()


def _head(resp: Response) -> bytes:
    lines = [f"{resp.version} {resp.status} {resp.reason}"] + [f"{n}: {v}" for n, v in resp.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"header must be 'Name: value', not {line!r}")
    return name.strip(), value.strip()


def _data(data: str) -> bytes:
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        with open(data[1:], "rb") as f:
            return f.read()
    return data.encode("utf-8")


def _verbose_handler(logger: logging.Logger) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy.client.fetch URL [flags]``: the same as ``fwdproxy fetch URL [flags]``."""
    parser = argparse.ArgumentParser(prog="fwdproxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["fetch", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
