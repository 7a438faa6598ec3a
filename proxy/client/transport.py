"""Client connections: opening them (direct, via a proxy, or through CONNECT), pooling, responses.

This module owns the client's sockets. A Dialer opens the socket for a Route
(TCP to the proxy or the target, the CONNECT exchange, the TLS handshake with
the *target*); a Connection is an ``http.client.HTTPConnection`` on that
socket; the Pool keeps idle ones per Route; a Response streams its body off
its connection and gives the connection back only once the body was read to
its end. Socket, ssl and http.client failures are translated here into the
client's errors (``raise ... from``). It knows nothing of redirects, cookies
or retries.

Why the CONNECT exchange is ours rather than ``HTTPSConnection.set_tunnel()``:
on Python 3.11, ``set_tunnel()`` turns a refusal into a bare
``OSError("Tunnel connection failed: 407 ...")`` and discards the response
headers (``Proxy-Authenticate``, ``Proxy-Status``), which callers need;
``get_proxy_response_headers()`` arrives only in 3.12. It also sends
``CONNECT ... HTTP/1.0`` without a Host header, runs the exchange under the
read timeout, and can only be observed through ``set_debuglevel()`` printing
to stdout. Getting the headers would mean overriding the private
``_tunnel()``. So the Dialer sends ``CONNECT host:port HTTP/1.1`` with Host and
``Proxy-Authorization`` itself, parses the answer with the stdlib's
``http.client.HTTPResponse``, reads exactly the head (so no byte of the
tunnel is swallowed by a buffer), then wraps the socket with TLS for the
target host (SNI and hostname check for the target, never the proxy) and
hands it to an ``HTTPConnection`` through its public ``connect()`` hook.
"""

from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import (
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    ProtocolError,
    ProxyError,
    ReadTimeout,
    TLSError,
)
from .rules import (
    Mode,
    Route,
)

Debug = Callable[[str], None]
MAX_CONNECT_HEAD = 65536
# Headers whose values stay out of debug logs.
_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def _quiet(line: str) -> None:
    pass


def show_fields(debug: Debug, prefix: str, fields: Sequence[tuple[str, str]]) -> None:
    for name, value in fields:
        if name.lower() in _SECRET:
            value = value.split(" ", 1)[0] + " [hidden]" if " " in value else "[hidden]"
        debug(f"{prefix} {name}: {value}")


class _Replay:
    """Enough of a socket for HTTPResponse to parse bytes already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


class Dialer:
    """Opens the socket a Route needs, in the order the route needs it."""

    def __init__(self, ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext], *, user_agent: str,
                 debug: Debug | None = None) -> None:
        self._context = ssl_context
        self.user_agent = user_agent
        self.debug = debug or _quiet

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if not isinstance(self._context, ssl.SSLContext):
            # Made at the first HTTPS target: loading the system store costs ~50 ms.
            self._context = self._context()
        return self._context

    def open(self, route: Route, connect_timeout: float, read_timeout: float) -> socket.socket:
        sock = self._tcp(route, connect_timeout)
        try:
            if route.mode is Mode.TUNNEL:
                self._tunnel(sock, route)
            if route.scheme == "https":
                sock = self._tls(sock, route.host)
            sock.settimeout(read_timeout)
            return sock
        except BaseException:
            sock.close()
            raise

    def _tcp(self, route: Route, timeout: float) -> socket.socket:
        what, host, port = (("proxy", route.proxy.host, route.proxy.port) if route.proxy
                            else ("target", route.host, route.port))
        where = f"{what} [{host}]:{port}" if ":" in host else f"{what} {host}:{port}"
        self.debug(f"* connecting to {where} ({route})")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"timed out connecting to {where} after {timeout:g}s") from exc
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {where}: {exc.strerror}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _tunnel(self, sock: socket.socket, route: Route) -> None:
        """CONNECT host:port (RFC 9110 section 9.3.6); returns once the tunnel is open."""
        assert route.proxy is not None
        authority = _host_port(route.host, route.port)
        # RFC 9112 section 3.2.3: authority-form, with Host (required in HTTP/1.1).
        fields = [("Host", authority), ("User-Agent", self.user_agent)]
        if route.proxy.authorization:
            fields.append(("Proxy-Authorization", route.proxy.authorization))
        self.debug(f"> CONNECT {authority} HTTP/1.1")
        show_fields(self.debug, ">", fields)
        head = f"CONNECT {authority} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
        try:
            sock.sendall(head.encode("latin-1"))
            resp = http.client.HTTPResponse(_Replay(_read_head(sock)), method="CONNECT")  # type: ignore[arg-type]
            resp.begin()
        except TimeoutError as exc:
            raise ConnectTimeout(f"proxy {route.proxy} did not answer CONNECT {authority} in time") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ProtocolError(f"proxy {route.proxy} broke off CONNECT {authority}: {exc!r}") from exc
        self.debug(f"< HTTP/{resp.version / 10:.1f} {resp.status} {resp.reason}")
        show_fields(self.debug, "<", resp.getheaders())
        if not 200 <= resp.status < 300:  # any 2xx opens the tunnel (RFC 9110 section 9.3.6)
            body = _short_body(sock, resp)
            detail = body.decode("utf-8", "replace").strip().splitlines()
            raise ProxyError(f"proxy {route.proxy} refused CONNECT {authority}: {resp.status} {resp.reason}"
                             + (f" ({detail[0][:200]})" if detail else ""),
                             status=resp.status, reason=resp.reason, headers=resp.getheaders(), body=body)

    def _tls(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        try:
            tls = self.ssl_context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise TLSError(f"certificate of {host} not trusted: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake with {host} failed: {exc.reason or exc}") from exc
        except TimeoutError as exc:
            raise ConnectTimeout(f"TLS handshake with {host} timed out") from exc
        except OSError as exc:
            raise TLSError(f"connection closed during the TLS handshake with {host}: {exc}") from exc
        cipher = tls.cipher()
        self.debug(f"* TLS {tls.version()} {cipher[0] if cipher else ''}, certificate verified for {host}")
        return tls


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_head(sock: socket.socket) -> bytes:
    """Read a response head and not one byte more: what follows belongs to the tunnel.

    MSG_PEEK finds the blank line; recv then takes exactly the head.
    """
    head = b""
    while True:
        peeked = sock.recv(65536, socket.MSG_PEEK)
        if not peeked:
            raise ConnectionClosed("the proxy closed the connection before answering CONNECT")
        tail = head[-3:]
        end = (tail + peeked).find(b"\r\n\r\n")
        want = len(peeked) if end < 0 else end + 4 - len(tail)
        while want:
            piece = sock.recv(want)
            if not piece:
                raise ConnectionClosed("the proxy closed the connection in its answer to CONNECT")
            head, want = head + piece, want - len(piece)
        if end >= 0:
            return head
        if len(head) > MAX_CONNECT_HEAD:
            raise ProtocolError("the proxy's answer to CONNECT is too long")


def _short_body(sock: socket.socket, resp: http.client.HTTPResponse, limit: int = 4096) -> bytes:
    """The start of a refusal's body, for the error message (our proxy says why in one line)."""
    length = resp.getheader("Content-Length", "")
    if not length.isdigit() or not 0 < int(length) <= limit:
        return b""
    data = b""
    try:
        while len(data) < int(length):
            piece = sock.recv(int(length) - len(data))
            if not piece:
                break
            data += piece
    except OSError:
        pass
    return data


class Connection(http.client.HTTPConnection):
    """An HTTPConnection for one Route, whose socket the Dialer opens."""

    def __init__(self, route: Route, dialer: Dialer) -> None:
        host, port = (route.proxy.host, route.proxy.port) if route.mode is Mode.FORWARD and route.proxy \
            else (route.host, route.port)
        super().__init__(host, port)
        self.route = route
        self.dialer = dialer
        self.auto_open = 0  # never reconnect behind the pool's back
        self.blocksize = 65536
        self.requests = 0
        self.connect_timeout = 10.0
        self.read_timeout = 10.0

    def connect(self) -> None:
        self.sock = self.dialer.open(self.route, self.connect_timeout, self.read_timeout)

    def __repr__(self) -> str:
        state = "CLOSED" if self.sock is None else "OPEN"
        return f"<Connection [{self.route}, {state}, Request Count: {self.requests}]>"


def is_dropped(sock: socket.socket | None) -> bool:
    """True if an idle connection is unusable: closed by the peer, or holding stray bytes.

    An idle HTTP/1.1 connection has nothing to read. Over TLS 1.3, though, a
    server may send session tickets after the handshake, which are not
    application data: a non-blocking read tells them apart.
    """
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1)
        return True  # EOF, or bytes nobody asked for
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class Pool:
    """Idle keep-alive connections per Route (proxy, scheme, host, port), most recent first."""

    def __init__(self, max_idle_per_route: int = 8) -> None:
        self.max_idle_per_route = max_idle_per_route
        self.opened = 0
        self.reused = 0
        self._idle: dict[Route, list[Connection]] = {}
        self._lock = threading.Lock()

    def take(self, route: Route) -> Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(route)
                if not idle:
                    return None
                conn = idle.pop()
            if not is_dropped(conn.sock):
                self.reused += 1
                return conn
            conn.close()

    def give(self, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.route, [])
            if conn.sock is not None and len(idle) < self.max_idle_per_route:
                idle.append(conn)
                return
        conn.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        with self._lock:
            conns = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def __repr__(self) -> str:
        return f"<Pool idle={self.idle_count()} opened={self.opened} reused={self.reused}>"


# A reused connection that fails like this was closed by the server while idle.
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn socket, ssl and http.client failures during an exchange into ClientErrors."""
    try:
        yield
    except ClientError:
        raise
    except TimeoutError as exc:
        raise ReadTimeout(f"{what}: nothing received within the read timeout") from exc
    except _CLOSED as exc:
        raise ConnectionClosed(f"{what}: the server closed the connection ({exc!r})") from exc
    except http.client.IncompleteRead as exc:
        raise ProtocolError(f"{what}: the body ended early ({len(exc.partial)} bytes read, "
                            f"{exc.expected} more expected)") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise ProtocolError(f"{what}: {exc!r}") from exc


# -- the response: its head, and its body streamed off the connection --------------


class Deadline:
    """A total deadline across hops; clamps each connect or read timeout to the time left."""

    def __init__(self, total: float | None) -> None:
        self.total = total
        self.end = None if total is None else time.monotonic() + total

    def clamp(self, seconds: float, error: type[ClientTimeout]) -> float:
        if self.end is None:
            return seconds
        left = self.end - time.monotonic()
        if left <= 0:
            raise error(f"the total deadline of {self.total:g}s passed")
        return min(seconds, left)


class Decoder:
    """gzip or deflate content coding (RFC 9110 section 8.4.1), decoded as it streams."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        # "deflate" is zlib-wrapped by the RFC; some servers send raw deflate: try both.
        wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._first = coding == "deflate"

    def decode(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data)
        except zlib.error as exc:
            if not self._first:
                raise ProtocolError(f"cannot decode {self.coding} content: {exc}") from exc
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._z.decompress(data)
        self._first = False
        return out

    def flush(self) -> bytes:
        return self._z.flush()


class Stream:
    """The body of one response, read from its connection, which goes back to the pool once it is clean."""

    def __init__(self, conn: Connection, raw: Any, pool: Pool, deadline: Deadline, read_timeout: float,
                 decoder: Decoder | None) -> None:
        self.conn, self.raw, self.pool = conn, raw, pool
        self.sock = conn.sock
        self.deadline, self.read_timeout, self.decoder = deadline, read_timeout, decoder
        self.done = False

    def chunks(self, size: int) -> Iterator[bytes]:
        while not self.done:
            try:
                if self.sock is not None:
                    self.sock.settimeout(self.deadline.clamp(self.read_timeout, ReadTimeout))
                with translated(f"reading the body from {self.conn.route}"):
                    data = self.raw.read1(size)
            except ClientError:
                self.release(clean=False)
                raise
            if not data:
                yield from self._finish()
                return
            yield self.decoder.decode(data) if self.decoder else data

    def _finish(self) -> Iterator[bytes]:
        missing = self.raw.length
        if not self.raw.chunked and missing:
            self.release(clean=False)
            raise ProtocolError(f"connection closed with {missing} bytes of the body not received")
        self.release(clean=True)
        if self.decoder:
            yield self.decoder.flush()

    def release(self, clean: bool) -> None:
        """Pool the connection if the body was read to its end and the server keeps it open; else close it."""
        if self.done:
            return
        self.done = True
        self.raw.close()
        if clean and self.conn.sock is not None:
            self.pool.give(self.conn)
        else:
            self.conn.close()
