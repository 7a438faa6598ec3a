"""Command line: flags and FWDPROXY_* environment variables -> Config -> a running ProxyServer.

``fwdproxy [serve] [flags]``; ``serve`` is the default subcommand, beside
``fwdproxy health`` (``server/health.py``) and ``fwdproxy fetch`` (``client/fetch.py``). Every flag
can also be set as an environment variable named FWDPROXY_ plus the flag in
upper case (``--connect-timeout`` -> ``FWDPROXY_CONNECT_TIMEOUT``); a flag on
the command line wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import __version__, config_file
from .client import fetch
from .config import (
    LOG_FORMATS,
    LOG_LEVELS,
    LOOPBACK_NETWORKS,
    Config,
    ConfigError,
    parse_networks,
    parse_ports,
)
from .record import command as flows_command
from .record.store import StoreError
from .server import descriptors, health, memory, reload
from .server.listener import ProxyServer
from .server.rewrite import parse_rules
from .server.routing import Router
from .tls import command as ca_cmd
from .ui import command as ui_command
from .ui.app import UiServer

log = logging.getLogger("fwdproxy")
_DEFAULTS = Config()
SUBCOMMANDS = ("serve", "fetch", "health", "flows", "ca", "ui", "config")
RECORD_CAPTURE = 1 << 20  # --capture-bodies default with --record, --har or --ui


def _env(flag: str, default: Any) -> Any:
    return os.environ.get("FWDPROXY_" + flag.upper().replace("-", "_"), default)


def _env_list(flag: str) -> list[str]:
    return [item.strip() for item in _env(flag, "").split(",") if item.strip()]


def _credentials(pairs: list[str], path: str | None) -> tuple[tuple[str, str], ...]:
    lines = list(pairs)
    if path:
        with open(path, encoding="utf-8") as file:
            lines += [line.strip() for line in file if line.strip() and not line.startswith("#")]
    creds = []
    for line in lines:
        user, colon, password = line.partition(":")
        if not colon:
            raise ConfigError(f"credentials must be user:password, got {user[:20]!r}...")
        creds.append((user, password))
    return tuple(creds)


def _add_routing(serve: argparse.ArgumentParser) -> None:
    routing = serve.add_argument_group(
        "routing and rewrite rules (URL_GLOB: [SCHEME://]HOST[:PORT][/PATH], globs allowed)")
    routing.add_argument("--upstream-proxy", default=_env("upstream-proxy", None),
                         metavar="http://[USER:PASSWORD@]HOST:PORT",
                         help="send everything through this parent proxy (never read from HTTP_PROXY)")
    routing.add_argument("--upstream-bypass", action="append", metavar="LIST",
                         default=_env_list("upstream-bypass"),
                         help="targets that go direct: NO_PROXY syntax plus CIDRs, e.g. "
                              "localhost,.corp.example,10.0.0.0/8 (repeatable)")
    routing.add_argument("--upstream-route", action="append",
                         metavar="HOSTS=http://[USER:PASSWORD@]HOST:PORT|direct",
                         default=[v.strip() for v in _env("upstream-route", "").split(";") if v.strip()],
                         help="per-host routing, first match first: HOSTS (NO_PROXY syntax, comma-"
                              "separated) through the parent URL, or direct (repeatable)")
    for flag, metavar, text in (
            ("map-remote", "[keep-host:]URL_GLOB=URL", "forward matching requests to another origin "
             "and path prefix; Host follows unless keep-host:"),
            ("map-local", "URL_GLOB=DIR_OR_FILE", "answer matching requests from local files"),
            ("set-header", "[response:]URL_GLOB=NAME: VALUE", "set a request (or response) field"),
            ("remove-header", "[response:]URL_GLOB=NAME", "remove a request (or response) field"),
            ("block", "URL_GLOB[=STATUS]", "refuse matching requests (default 403)")):
        routing.add_argument(f"--{flag}", action="append", default=[], metavar=metavar,
                             help=text + " (repeatable)")


# Rule flags are tried kind by kind in this order, and in the order given within a kind.
_RULE_ORDER = ("block", "map-local", "map-remote", "set-header", "remove-header")


def _rewrite_rules(ns: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """Every rule flag as (kind, text), for Config.rewrite_rules."""
    return tuple((kind, text) for kind in _RULE_ORDER for text in getattr(ns, kind.replace("-", "_")))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwdproxy",
        description="A forward HTTP/1.1 proxy with CONNECT tunnelling. Point clients at it with "
                    "HTTP_PROXY/HTTPS_PROXY=http://HOST:PORT. Every flag may also be given as an "
                    "environment variable FWDPROXY_<FLAG> (e.g. FWDPROXY_PORT=3128). "
                    "Also: `fwdproxy fetch URL -x PROXY`, a curl-like client (see fetch --help).")
    sub = parser.add_subparsers(dest="command", metavar="{serve,fetch,health,flows,ca,config}")
    serve = sub.add_parser("serve", prog="fwdproxy [serve]", description=parser.description,
                           help="run the proxy (the default)")
    serve.add_argument("--version", action="version", version=f"fwdproxy {__version__}")
    serve.add_argument("--config", default=_env("config", None), metavar="FILE",
                       help="TOML file with any of these flags as keys (flags and FWDPROXY_* win "
                            "over it); SIGHUP reloads it. See docs/configuration.md")
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
    access = serve.add_argument_group("access control (default: loopback clients only, no auth)")
    access.add_argument("--allow-from", default=_env("allow-from", None), metavar="CIDR[,CIDR...]",
                        help="client networks allowed to use the proxy (default 127.0.0.0/8,::1; "
                             "with --auth, any address)")
    access.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        default=[v for v in [_env("auth", None)] if v],
                        help="require Proxy-Authorization Basic credentials (repeatable)")
    access.add_argument("--auth-file", default=_env("auth-file", None), metavar="FILE",
                        help="file of user:password lines (# comments allowed)")
    access.add_argument("--allow-host", action="append", metavar="PATTERN",
                        default=_env_list("allow-host"),
                        help="only these targets: host glob (*.example.com) or CIDR (repeatable)")
    access.add_argument("--deny-host", action="append", metavar="PATTERN",
                        default=_env_list("deny-host"),
                        help="never these targets: host glob or CIDR (repeatable; wins over allow)")
    access.add_argument("--connect-ports", default=_env("connect-ports", None), metavar="LIST",
                        help="ports CONNECT may reach, e.g. 443,8443,9000-9100 (default: any while "
                             "only loopback clients are allowed, else 443)")
    access.add_argument("--deny-private", action="store_true",
                        default=_env("deny-private", "") not in ("", "0", "false"),
                        help="refuse targets resolving to loopback, private, link-local or "
                             "metadata addresses (checked on the address connected to)")
    _add_routing(serve)
    tls = serve.add_argument_group("TLS interception (off by default; see docs/interception.md)")
    tls.add_argument("--intercept", action="store_true",
                     default=_env("intercept", "") not in ("", "0", "false"),
                     help="decrypt CONNECT tunnels whose client starts TLS, with certificates from "
                          "the local CA (created if missing), and forward their requests like plain ones")
    tls.add_argument("--intercept-host", action="append", metavar="PATTERN",
                     default=_env_list("intercept-host"),
                     help="intercept only these targets: host glob or CIDR (repeatable)")
    tls.add_argument("--no-intercept-host", action="append", metavar="PATTERN",
                     default=_env_list("no-intercept-host"),
                     help="relay these targets blindly, e.g. apps that pin certificates (repeatable; wins)")
    tls.add_argument("--ca-dir", default=None, metavar="DIR",
                     help="folder of the local CA (default: FWDPROXY_CA_DIR, else certs/ in a "
                          "checkout, else a per-user data folder)")
    tls.add_argument("--upstream-ca", action="append", metavar="FILE", default=_env_list("upstream-ca"),
                     help="also trust the CA certificates in FILE (PEM) for origins (repeatable)")
    tls.add_argument("--upstream-insecure", action="store_true",
                     default=_env("upstream-insecure", "") not in ("", "0", "false"),
                     help="do not verify origins' certificates (development only; every flow is marked)")
    access.add_argument("--upgrade-protocols", default=_env("upgrade-protocols", "websocket"),
                        metavar="LIST",
                        help="Upgrade protocols a plain (ws://) request may switch to; '' for none "
                             "(default %(default)s). CONNECT tunnels are not affected")
    serve.add_argument("--workers", type=int, default=_env("workers", 0),
                       help="processes sharing the port with SO_REUSEPORT; 0 (the default) is one per CPU, "
                            "or 1 with --record, --har, --flows-jsonl or --ui (one writer per file)")
    serve.add_argument("--threads", type=int, default=_env("threads", _DEFAULTS.threads),
                       help="threads per process running exchanges at once (the GIL lets one compute); "
                            "an exchange that waits (a slow origin, a large body) gives up its slot after "
                            "2 ms, and idle keep-alive connections hold no thread (default %(default)s)")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-request-line", type=int,
                        default=_env("max-request-line", _DEFAULTS.max_request_line),
                        help="bytes in a request line, else 414 (default %(default)s)")
    limits.add_argument("--max-header-bytes", type=int,
                        default=_env("max-header-bytes", _DEFAULTS.max_header_bytes),
                        help="bytes in a header section, else 431 (default %(default)s)")
    limits.add_argument("--max-headers", type=int,
                        default=_env("max-headers", _DEFAULTS.max_header_count),
                        help="header fields in a request, else 431 (default %(default)s)")
    limits.add_argument("--max-body", type=int, default=_env("max-body", None),
                        help="bytes in a request body, else 413 (default: no limit)")
    limits.add_argument("--max-clients", type=int, default=_env("max-clients", _DEFAULTS.max_clients),
                        help="concurrent client connections, else 503 (default %(default)s)")
    limits.add_argument("--header-timeout", type=float,
                        default=_env("header-timeout", _DEFAULTS.header_timeout),
                        help="seconds for a whole request head to arrive, else 408 "
                             "(default %(default)s)")
    serve.add_argument("--metrics", action=argparse.BooleanOptionalAction,
                       default=_env("metrics", "1") not in ("0", "false", "no", "off"),
                       help="serve GET /metrics (Prometheus text) and count flows for it "
                            "(default: on)")
    serve.add_argument("--metrics-allow-from", default=_env("metrics-allow-from", None),
                       metavar="CIDR[,CIDR...]",
                       help="networks that may read /metrics without credentials (default "
                            "127.0.0.0/8,::1); clients with valid --auth credentials always may")
    serve.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower,
                       default=_env("log-level", _DEFAULTS.log_level),
                       help="info logs one line per exchange (default %(default)s)")
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       default=_env("log-format", _DEFAULTS.log_format),
                       help="text lines or JSON lines (default %(default)s)")
    _add_record_flags(serve)
    _add_ui_flags(serve)
    fetch.add_parser(sub)
    health.add_parser(sub)
    flows_command.add_parser(sub)
    ca_cmd.add_parser(sub)
    ui_command.add_parser(sub)
    _add_config_parser(sub)
    return parser


def _add_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="show the effective configuration, or check a file",
                            description="fwdproxy config show [serve flags]: every setting with "
                                        "its source (flag, env, file, default), secrets redacted. "
                                        "fwdproxy config check FILE: validate a file, exit 0 or 2.")
    what = config.add_subparsers(dest="config_command", required=True, metavar="{show,check}")
    show = what.add_parser("show", help="print the effective configuration with each value's source")
    show.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="FLAGS",
                      help="serve flags, e.g. --config fwdproxy.toml --port 3128")
    check = what.add_parser("check", help="validate a config file without starting")
    check.add_argument("file", metavar="FILE")


def _add_ui_flags(serve: argparse.ArgumentParser) -> None:
    ui = serve.add_argument_group("traffic page (see docs/ui.md)")
    ui.add_argument("--ui", action="store_true", default=_env("ui", "") not in ("", "0", "false"),
                    help="serve a live traffic page; startup prints its URL with a token. Without "
                         "--record, flows go to a temporary store removed at exit")
    ui.add_argument("--ui-host", default=_env("ui-host", _DEFAULTS.ui_host),
                    help="address of the page (default %(default)s); another one is reachable from "
                         "other machines (the token still guards it)")
    ui.add_argument("--ui-port", type=int, default=_env("ui-port", _DEFAULTS.ui_port),
                    help="port of the page (default %(default)s; 0: any free)")


def _add_record_flags(serve: argparse.ArgumentParser) -> None:
    record = serve.add_argument_group("recording (see `fwdproxy flows --help`)")
    record.add_argument("--record", metavar="FILE.sqlite", default=_env("record", ""),
                        help="store every flow in this SQLite file (created, or appended to)")
    record.add_argument("--capture-bodies", metavar="BYTES", type=int, default=_env("capture-bodies", None),
                        help=f"body bytes kept per message (default {RECORD_CAPTURE} with --record or "
                             "--har, else 0)")
    record.add_argument("--record-secrets", action="store_true",
                        default=_env("record-secrets", "") not in ("", "0", "false"),
                        help="keep Authorization, Cookie and Set-Cookie values in recordings "
                             "(default: <redacted>)")
    record.add_argument("--har", metavar="FILE", default=_env("har", ""),
                        help="write every flow as a HAR file when the proxy stops")
    record.add_argument("--flows-jsonl", metavar="FILE", default=_env("flows-jsonl", ""),
                        help="append one JSON object per finished flow to FILE (- for stdout)")


def parse_config(argv: Sequence[str] | None = None) -> Config:
    return load_config(argv).config


def load_config(argv: Sequence[str] | None = None) -> config_file.Loaded:
    """Flags > FWDPROXY_* environment > --config file > defaults; exits 2 with a message if refused."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        args = args[1:]
    try:
        return config_file.load(build_parser, args, config_from_args)
    except ValueError as exc:
        build_parser().exit(2, f"fwdproxy: {exc}\n")


def config_from_args(ns: argparse.Namespace) -> Config:
    """The Config the serve flags describe (ValueError, with a reason, if they are refused)."""
    try:
        auth = _credentials(ns.auth, ns.auth_file)
        if ns.allow_from:
            allow_from = parse_networks(ns.allow_from)
        else:
            # Credentials are the gate on a shared network: with --auth and no
            # --allow-from, anyone who can reach the port may try them.
            allow_from = parse_networks("0.0.0.0/0,::/0") if auth else LOOPBACK_NETWORKS
        config = Config(host=ns.host, port=int(ns.port), timeout=float(ns.timeout),
                        connect_timeout=float(ns.connect_timeout),
                        client_idle_timeout=float(ns.client_idle_timeout),
                        tunnel_idle_timeout=float(ns.tunnel_idle_timeout),
                        log_level=ns.log_level, log_format=ns.log_format,
                        allow_from=allow_from, auth=auth,
                        allow_hosts=tuple(ns.allow_host), deny_hosts=tuple(ns.deny_host),
                        connect_ports=parse_ports(ns.connect_ports) if ns.connect_ports else None,
                        deny_private=ns.deny_private,
                        max_request_line=int(ns.max_request_line),
                        max_header_bytes=int(ns.max_header_bytes),
                        max_header_count=int(ns.max_headers),
                        max_body=None if ns.max_body is None else int(ns.max_body),
                        max_clients=int(ns.max_clients), header_timeout=float(ns.header_timeout),
                        workers=_worker_count(ns), threads=int(ns.threads), metrics=ns.metrics,
                        metrics_allow_from=parse_networks(ns.metrics_allow_from)
                        if ns.metrics_allow_from else LOOPBACK_NETWORKS,
                        intercept=ns.intercept,
                        intercept_hosts=tuple(ns.intercept_host),
                        no_intercept_hosts=tuple(ns.no_intercept_host),
                        ca_dir=str(ca_cmd.ca_dir(ns.ca_dir)), upstream_ca=tuple(ns.upstream_ca),
                        upstream_insecure=ns.upstream_insecure,
                        upgrade_protocols=tuple(p.strip().lower() for p in ns.upgrade_protocols.split(",")
                                                if p.strip()),
                        **_record_settings(ns),
                        upstream_proxy=ns.upstream_proxy or None,
                        upstream_bypass=tuple(ns.upstream_bypass), upstream_routes=tuple(ns.upstream_route),
                        rewrite_rules=_rewrite_rules(ns))
        # Parsed here too, so a bad parent URL, bypass entry or rule stops the start with one line.
        Router.from_settings(config.upstream_proxy, config.upstream_bypass, config.upstream_routes)
        parse_rules(config.rewrite_rules)
        return config
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None


def _worker_count(ns: argparse.Namespace) -> int:
    """The worker processes to run: as asked, or for 0 one per CPU this process may use.

    A recording, a flows file or the traffic page has one writer (or reader),
    so 0 means one process with any of them.
    """
    if int(ns.workers) != 0:
        return int(ns.workers)
    if ns.record or ns.har or ns.flows_jsonl or ns.ui:
        return 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _record_settings(ns: argparse.Namespace) -> dict[str, Any]:
    capture = ns.capture_bodies
    if capture is None:
        capture = RECORD_CAPTURE if ns.record or ns.har or ns.ui else 0
    return {"record": ns.record, "har": ns.har, "flows_jsonl": ns.flows_jsonl,
            "record_secrets": ns.record_secrets, "capture_bodies": int(capture),
            "ui": bool(ns.ui), "ui_host": ns.ui_host, "ui_port": int(ns.ui_port)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["config", "show"] and not {"-h", "--help"} & set(args):
        # The serve flags follow as they are: argparse would take them for show's own.
        return _config_command(argparse.Namespace(config_command="show", serve_args=args[2:]))
    if args[:1] in (["fetch"], ["health"], ["flows"], ["ca"], ["ui"], ["config"]):
        ns = build_parser().parse_args(args)
        if args[0] == "config":
            return _config_command(ns)
        runner = {"fetch": fetch.run, "health": health.run, "flows": flows_command.run,
                  "ca": ca_cmd.run, "ui": ui_command.run}[args[0]]
        return int(runner(ns))
    loaded = load_config(args)
    with _stop_signals_held(), _ui_store(loaded.config) as config:
        return _run(config, args, loaded)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (pending, not lost) until ``_serve`` has its handler.

    The default action would end the process at once: a SIGTERM that came while
    the proxy starts (the traffic page already announced) left the --ui scratch
    store behind and exited -15. Threads started meanwhile keep them blocked,
    so a held signal reaches the main thread once ``_serve`` lets it through.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextmanager
def _ui_store(config: Config) -> Iterator[Config]:
    """--ui without --record records into a temporary store, removed at exit (as mitmweb shows
    traffic without being told where to keep it)."""
    if not config.ui or config.record:
        yield config
        return
    with ui_command.scratch_store() as path:
        yield config.replace(record=str(path))


def _run(config: Config, args: list[str], loaded: config_file.Loaded) -> int:
    _setup_logging(config)
    if config.intercept:
        try:
            _, created = ca_cmd.ensure_ca(config.ca_dir)
        except ValueError as exc:  # CAError: the message names the file and the fix
            print(f"fwdproxy: {exc}", file=sys.stderr)
            return 2
        if created:
            _announce(config, created)
    for cafile in config.upstream_ca:
        if not os.path.isfile(cafile):
            print(f"fwdproxy: --upstream-ca {cafile}: no such file", file=sys.stderr)
            return 2
    threading.stack_size(512 * 1024)  # threads per connection: keep their stacks small
    memory.tune_allocator()  # few malloc arenas: resident memory plateaus under churn
    descriptors.raise_soft_limit()  # before the server sizes --max-clients to it
    try:
        server = ProxyServer(config)
    except StoreError as exc:
        print(f"fwdproxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fwdproxy: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except ValueError as exc:  # the CA became unusable between the check and the start
        print(f"fwdproxy: {exc}", file=sys.stderr)
        return 2
    if config.exposure_warning:
        _announce(config, f"fwdproxy: {config.exposure_warning}")
    if config.upstream_insecure:
        _announce(config, "fwdproxy: warning: --upstream-insecure: origins' certificates are NOT verified; "
                          "every https flow is marked upstream-tls=unverified")
    page = _start_page(server, config) if config.ui else None
    if config.ui and page is None:
        return 1
    # A SIGHUP arriving before a worker has its handler would end it: hold it until then.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    server, workers = _fork_workers(server, config)
    reloader = reload.Reloader(server, lambda: config_file.load(build_parser, args, config_from_args).config,
                               loaded.path, forward_to=workers or (), startup=loaded.config)
    reloader.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if workers is None:  # in a worker process: serve until told to stop
        return _serve(server, config, announce=False)
    try:
        code = _serve(server, config, announce=True, workers=workers)
    finally:
        if page is not None:
            page.stop()
    for pid in workers:
        os.waitpid(pid, 0)
    return code


def _start_page(server: ProxyServer, config: Config) -> UiServer | None:
    """The traffic page on its own port, over the store the proxy records into."""
    try:
        page = UiServer(config.record, host=config.ui_host, port=config.ui_port, live=True).start()
    except (OSError, StoreError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"fwdproxy: cannot serve the traffic page on {config.ui_host}:{config.ui_port}: {why}",
              file=sys.stderr)
        server.server_close()
        server.recording.close(write_har=False)
        return None
    if page.exposure_warning:
        _announce(config, f"fwdproxy: {page.exposure_warning}")
    _announce(config, f"fwdproxy: traffic page at {page.url}")
    return page


def _config_command(ns: argparse.Namespace) -> int:
    """``fwdproxy config show [flags]`` and ``fwdproxy config check FILE``."""
    try:
        if ns.config_command == "check":
            with config_file.without_environment():  # judge the file alone
                loaded = config_file.load(build_parser, ["--config", ns.file], config_from_args)
            count = sum(s.source.startswith("file ") for s in loaded.settings)
            print(f"{ns.file}: ok ({count} settings)")
            return 0
        print(config_file.show(load_config(ns.serve_args)), end="")
        return 0
    except ValueError as exc:
        print(f"fwdproxy: {exc}", file=sys.stderr)
        return 2


class _JSONFormatter(logging.Formatter):
    """JSON lines for every record: access lines are JSON already, the rest get wrapped."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "fwdproxy.access" and message.startswith("{"):
            return message
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(), "message": message}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


def _announce(config: Config, text: str) -> None:
    """Startup lines: plain text, or one JSON object per line under --log-format json."""
    line = json.dumps({"level": "info", "message": text}) if config.log_format == "json" else text
    print(line, file=sys.stderr, flush=True)


def _fork_workers(server: ProxyServer, config: Config) -> tuple[ProxyServer, list[int] | None]:
    """Start workers-1 more processes, each with its own socket on the same port (SO_REUSEPORT).

    Returns the server to run and, in the parent, the children's pids (None
    in a child). Forking happens before any thread is started, so no lock is
    copied while held.
    """
    pids: list[int] = []
    for _ in range(config.workers - 1):
        pid = os.fork()
        if pid == 0:
            server.server_close()  # the parent's socket; this worker binds its own
            child = ProxyServer(config.replace(port=server.port))
            child.metrics.worker = str(len(pids) + 1)
            return child, None
        pids.append(pid)
    if pids:
        server.metrics.worker = "0"
    return server, pids


def _serve(server: ProxyServer, config: Config, *, announce: bool, workers: Sequence[int] = ()) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.set()
            for pid in workers:  # the parent passes the signal on to every worker
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            # shutdown() waits for serve_forever, which runs on this very thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # any held since the start run now
    if announce:
        extra = f" ({config.workers} worker processes)" if config.workers > 1 else ""
        _announce(config, f"fwdproxy {__version__} listening on {server.url}{extra}")
    server.serve_forever(poll_interval=0.2)
    log.info("shutting down: waiting up to %gs for in-flight exchanges", config.shutdown_grace)
    server.drain(config.shutdown_grace)
    return 0
