"""ProxyServer: the listening socket, its threads, and what they share.

The server owns the Config, the upstream Pool, the FlowLog and the set of live
client connections and tunnels, so it can report status and shut down
cleanly: stop accepting, let in-flight exchanges finish up to a deadline, then
cut what is left. ``ThreadingHTTPServer`` alone does neither: its daemon
threads are never joined and its sockets never closed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .. import __version__
from ..config import Config
from ..http1 import responses
from ..http1.errors import ProxyError
from ..http1.target import Origin
from ..record.flows import Flow, FlowLog, Sink, log_sink
from ..record.metrics import Metrics
from ..record.recording import Recording
from ..tls.contexts import OriginTLS
from .connect import ConnectFn
from .descriptors import Budget, soft_limit
from .faults import Faults
from .handler import ProxyHandler
from .intercept import UpstreamTLSConnection, configured_interception
from .linger import half_close
from .live import Live
from .pool import Pool, UpstreamConnection
from .scheduler import Parked, Scheduler
from .shared import Client, ServerBase
from .tunnel import Relay, Tunnel
from .watchdog import Watchdog

log = logging.getLogger("fwdproxy")
_ACCEPT_BATCH = 64  # connections accepted at once from a readable listening socket


class ProxyServer(ServerBase):
    """A forward proxy on one listening socket; ``with ProxyServer(cfg) as s:`` runs it in the background."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, config: Config | None = None, *, connect: ConnectFn = socket.create_connection,
                 sinks: list[Sink] | None = None) -> None:
        self._connect_fn = connect
        # A per-instance name in Via, so a request that comes back through us is recognised.
        self.via_name = f"fwdproxy-{secrets.token_hex(3)}"
        self.live = Live.build(config or Config(), connect, self._own_address, self.via_name)
        config = self.config
        self.faults = Faults()
        self.interception = configured_interception(config) if config.intercept else None
        self._origin_tls: OriginTLS | None = None
        self.address_family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        self.allow_reuse_port = config.workers > 1
        self._spare_fd: int | None = None  # server_close() may run inside TCPServer.__init__
        # Opened before the socket: a bad recording path fails the start (StoreError).
        self.recording = Recording(record=config.record, har=config.har, jsonl=config.flows_jsonl,
                                   secrets=config.record_secrets)
        try:
            super().__init__((self.config.host, self.config.port), ProxyHandler)
        except BaseException:
            self.recording.close(write_har=False)
            raise
        self.budget = Budget.for_limit(soft_limit(), config.max_clients, config.pool_max_idle_total)
        if note := self.budget.note(config.max_clients):
            log.warning("%s", note)
        self.watchdog = Watchdog()
        self.pool = Pool(self._new_connection, max_idle_per_origin=self.config.pool_max_idle_per_origin,
                         max_idle_total=self.budget.max_idle, idle_timeout=self.config.pool_idle_timeout)
        self.watchdog.every_tick(self.pool.sweep)
        # Held so that, out of descriptors, one can be freed to accept a client and answer it.
        self._spare_fd = _open_spare()
        self._accept_backoff = 0.0
        self._next_fd_warning = 0.0
        self._busy = _busy_response(self.via_name)
        self.flows = FlowLog([log_sink(self.config.log_format)] if sinks is None else sinks)
        for sink in self.recording.sinks:
            self.flows.add(sink)
        self.metrics = Metrics()
        if self.config.metrics:
            self.flows.add(self.metrics.observe)
        self.started = time.monotonic()
        self.stopping = False
        self._clients: set[Client] = set()
        self._active = 0  # connections accepted and not yet closed, threads included
        # A few threads serve every connection that is ready; idle ones wait in its epoll.
        self.scheduler = Scheduler(self._resume, target=config.threads, name=f"fwdproxy-{self.port}-worker")
        self._parking: dict[Any, ProxyHandler] = {}  # sockets whose thread is letting go of them
        self._refused: queue.Queue[socket.socket] = queue.Queue(256)
        self._refuser: threading.Thread | None = None
        self.relay = Relay(self.config.tunnel_idle_timeout)
        self._detached: set[socket.socket] = set()  # client sockets the relay now owns
        self._stop_serving = threading.Event()  # shutdown() was called
        self._served = threading.Event()  # serve_forever is not running
        self._served.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def apply_config(self, config: Config) -> None:
        """Use ``config`` for new exchanges (established connections stay; see reload.py)."""
        self.live = Live.build(config, self._connect_fn, self._own_address, self.via_name)

    def _own_address(self) -> tuple[str, int]:
        return str(self.server_address[0]), self.port

    def server_close(self) -> None:
        super().server_close()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.config.host, self.server_address[1]

    def _new_connection(self, origin: Origin) -> UpstreamConnection:
        # The parent's own connections (plain HTTP in absolute-form, keyed by its address) dial
        # it directly; every other origin goes through the routed dialler.
        to_parent = self.router.parent_at(origin.host, origin.port) is not None
        connect = self.connect.parent_dial if to_parent else self.connect
        if origin.scheme == "https":
            return UpstreamTLSConnection(origin, self.origin_tls, connect_timeout=self.config.connect_timeout,
                                         read_timeout=self.config.timeout, connect=self.connect,
                                         watchdog=self.watchdog)
        return UpstreamConnection(origin, connect_timeout=self.config.connect_timeout,
                                  read_timeout=self.config.timeout, connect=connect,
                                  watchdog=self.watchdog)

    @property
    def origin_tls(self) -> OriginTLS:
        """What origins are verified against; made on first use (loading the system's roots takes a while)."""
        with self._lock:
            if self._origin_tls is None:
                self._origin_tls = OriginTLS(self.config.upstream_ca, insecure=self.config.upstream_insecure)
            return self._origin_tls

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    # -- live connections --------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(): the scheduler's threads accept, from the epoll they lead.

        socketserver's loop would accept on this thread and hand every connection
        over; here the thread that will serve a connection accepts it.
        """
        self._served.clear()
        try:
            if self._stop_serving.is_set():
                return
            self.socket.setblocking(False)
            self.scheduler.listen(self.socket.fileno(), self._accept_ready)
            try:
                while not self._stop_serving.wait(poll_interval):
                    pass
            finally:
                self.scheduler.unlisten()
        finally:
            self._served.set()

    def shutdown(self) -> None:
        """Stop serve_forever and wait until it has returned."""
        self._stop_serving.set()
        self._served.wait()

    def _accept_ready(self) -> list[Callable[[], None]]:
        """On a scheduler thread: accept the connections waiting, without blocking; their work."""
        work: list[Callable[[], None]] = []
        for _ in range(_ACCEPT_BATCH):
            try:
                request, client_address = self.get_request()
            except OSError:  # nothing more waiting (EAGAIN), or a failed accept (EMFILE: handled)
                break
            if (serve := self._admitted(request, client_address)) is not None:
                work.append(serve)
        return work

    def process_request(self, request: Any, client_address: Any) -> None:
        """socketserver's entry (handle_request): serve the connection on the scheduler."""
        if (serve := self._admitted(request, client_address)) is not None:
            self.scheduler.submit(serve)

    def _admitted(self, request: Any, client_address: Any) -> Callable[[], None] | None:
        """The work of serving a new connection, or None once it is answered 503 (too many)."""
        with self._lock:
            full = self._active >= self.budget.max_clients
            if not full:
                self._active += 1
        if full:
            self._refuse_busy(request)
            return None
        return functools.partial(self.process_request_thread, request, client_address)

    def park(self, handler: Any) -> bool:
        """Called by a handler between requests; its socket goes to the scheduler once its thread lets go."""
        with self._lock:
            if self.stopping:
                return False
            self._parking[handler.request] = handler
        return True

    def _resume(self, handler: Parked) -> None:
        """On a scheduler thread: a parked connection is readable; serve it."""
        assert isinstance(handler, ProxyHandler)
        try:
            handler.resume()
        except Exception:
            self.handle_error(handler.request, handler.client_address)
        finally:
            self.shutdown_request(handler.request)

    def _close_parked(self, handler: ProxyHandler) -> None:
        handler.parked = False
        try:
            handler.finish()
        finally:
            self.untrack(handler)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            handler = self._parking.pop(request, None)
        if handler is not None:
            if handler.requeued:
                self.scheduler.requeue(handler)  # its next request is here: served in turn
                return
            if self.scheduler.park(handler):
                return  # counted in _active still: a parked client is a client
            self._close_parked(handler)  # stopping: close it as if it had ended here
        with self._lock:
            if request in self._detached:
                return  # a tunnel: the relay closes it, and counts it out, when it ends
            self._active -= 1
        half_close(request)  # so a response sent while the client was still uploading is read
        self.close_request(request)  # socketserver's shutdown_request would send the FIN again

    def others_waiting(self) -> bool:
        return self.scheduler.others_waiting()

    def detached(self) -> contextlib.AbstractContextManager[None]:
        return self.scheduler.detached()

    def relay_tunnel(self, client: socket.socket, upstream: socket.socket, early: bytes,
                     flow: Flow, start: float, *, early_down: bytes = b"") -> None:
        """Hand an established tunnel to the relay; its flow is emitted when it ends."""
        def closed(tunnel: Tunnel) -> None:
            with self._lock:
                self._detached.discard(client)
                self._active -= 1
            flow.bytes_up += tunnel.bytes_up
            flow.bytes_down += tunnel.bytes_down
            flow.error = tunnel.error
            flow.finish(start)
            self.flows.emit(flow)

        with self._lock:
            self._detached.add(client)
        self.flows.emit_opened(flow)
        self.relay.add(client, upstream, early, closed, early_down=early_down)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            accepted = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._out_of_descriptors()
            raise  # socketserver drops the failed accept and selects again
        self._accept_backoff = 0.0
        return accepted

    def _out_of_descriptors(self) -> None:
        """accept() failed for want of descriptors: answer one waiting client, or back off.

        Retrying at once would spin (the listening socket stays readable) and
        leave every queued client hanging. Freeing the spare descriptor lets one
        client in to get its 503 and a close; without a spare, wait a little
        longer each time (up to half a second) before trying again.
        """
        now = time.monotonic()
        if now >= self._next_fd_warning:
            self._next_fd_warning = now + 10.0
            log.warning("out of file descriptors (RLIMIT_NOFILE %d): new clients get 503 until some close",
                        self.budget.limit)
        answered = False
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = self.socket.accept()
            except OSError:
                pass
            else:
                _answer_now(sock, self._busy)
                answered = True
            self._spare_fd = _open_spare()
        if answered and self._spare_fd is not None:
            return  # more may be waiting: the next select() says so at once
        self._accept_backoff = min(max(0.01, self._accept_backoff * 2), 0.5)
        time.sleep(self._accept_backoff)

    def _refuse_busy(self, sock: socket.socket) -> None:
        """Answer 503 from one shared thread: no per-connection thread, no blocking the accept loop."""
        try:
            self._refused.put_nowait(sock)
        except queue.Full:
            _answer_now(sock, self._busy)  # a flood: answered without waiting on the client
            return
        with self._lock:
            if self._refuser is None:
                self._refuser = threading.Thread(target=self._refuse_loop, name="fwdproxy-503", daemon=True)
                self._refuser.start()

    def _refuse_loop(self) -> None:
        while True:
            _answer_now(self._refused.get(), self._busy, wait=0.2)

    def track(self, client: Client) -> None:
        with self._lock:
            self._clients.add(client)

    def untrack(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def busy(self) -> bool:
        """Whether some exchange is in progress (its flow not recorded yet)."""
        with self._lock:
            return any(handler.busy for handler in self._clients)

    def status(self) -> dict[str, Any]:
        """What GET /healthz reports."""
        with self._lock:
            clients = len(self._clients)
        tunnels = self.relay.count()
        threads = self.scheduler.stats()
        return {"status": "stopping" if self.stopping else "ok", "version": __version__,
                "name": self.via_name, "pid": os.getpid(),
                # Which process answered: with --workers N each counts only its own traffic.
                "worker": self.metrics.worker, "workers": self.config.workers,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "client_connections": clients, "tunnels": tunnels,
                "upstream_idle": self.pool.idle_count(), "upstream_opened": self.pool.opened,
                "upstream_reused": self.pool.reused, "threads": threads["threads"],
                "idle_workers": threads["idle"], "parked_clients": threads["parked"],
                **({"record": recorded} if (recorded := self.recording.stats()) else {})}

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unhandled error serving %s", client_address)

    # -- life cycle --------------------------------------------------------

    def start(self) -> ProxyServer:
        """Serve on a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fwdproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight exchanges finish for up to ``grace`` seconds, close the rest."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.drain(self.config.shutdown_grace if grace is None else grace)

    def drain(self, grace: float) -> None:
        """After serve_forever has returned: finish in-flight work, then close everything."""
        self.stopping = True
        self.server_close()
        for parked in self.scheduler.stop():  # idle keep-alive connections: nothing to wait for
            assert isinstance(parked, ProxyHandler)
            self._close_parked(parked)
            self.shutdown_request(parked.request)
        deadline = time.monotonic() + grace
        while True:
            with self._lock:
                clients = list(self._clients)
            for handler in clients:
                if not handler.busy:
                    handler.close_now()  # idle keep-alive connection: nothing to wait for
            busy = [h for h in clients if h.busy]
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for handler in clients:
            handler.close_now()
        self.relay.stop()  # closing tunnels emits their flows
        self.pool.close()
        self.recording.close()  # after the last flow: commits the queue, writes the HAR
        self.scheduler.close()
        self.watchdog.stop()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(grace=0)

    def __repr__(self) -> str:
        return f"<ProxyServer {self.url} clients={len(self._clients)} tunnels={self.relay.count()}>"


def _busy_response(name: str) -> bytes:
    body = b"fwdproxy: too many client connections; retry shortly\n"
    busy = ProxyError("too many client connections", status=503)
    return responses.head(503, [("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8"),
                                ("Connection", "close"), ("Proxy-Status", responses.proxy_status(name, busy)),
                                ("Content-Length", str(len(body)))]) + body


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _answer_now(sock: socket.socket, response: bytes, wait: float = 0.0) -> None:
    """Write a short answer, blocking at most ``wait`` seconds per step (0: never), read what
    the client sent (so the close is a FIN, not a reset that could destroy the answer), and close."""
    try:
        sock.settimeout(wait)
        if wait:
            sock.sendall(response)
        else:
            sock.send(response)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)
    except OSError:
        pass
    finally:
        sock.close()
