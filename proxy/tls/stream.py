"""A server-side TLS session over a plain blocking socket, through memory BIOs.

The handler reads requests from a buffered reader and writes responses with
``sendall`` on a socket; this module gives it the same two things over a TLS
session, so the decrypted stream runs the very request loop a plain client
connection runs. It uses ``SSLObject`` with memory BIOs rather than
``SSLSocket`` for three reasons: bytes already read while deciding whether
the client speaks TLS are fed to the handshake first; the raw socket stays
the one the watchdog cuts (an SSLSocket detaches it, and its ``shutdown``
would drop TLS and let a last error page go out in clear text); and bytes
are counted as they cross the wire.
"""

from __future__ import annotations

import io
import socket
import ssl

RECV_SIZE = 65536
# Plaintext per SSLObject.write: one TLS record holds at most 16 KiB, this is a few.
WRITE_SIZE = 65536


def looks_like_client_hello(data: bytes) -> bool:
    """Whether data starts a TLS handshake record (RFC 8446 section 5.1: type 22, version 3.x)."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04


class TLSStream:
    """The decrypted side of a client's TLS session: ``recv_into``, ``sendall``, ``makefile("rb")``."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, early: bytes = b"") -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._incoming.write(early)
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.bytes_in = len(early)  # on the wire, both directions
        self.bytes_out = 0

    def handshake(self) -> None:
        """Complete the server handshake; ssl.SSLError or ConnectionError if the client will not."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionAbortedError("the client closed the connection during the TLS "
                                                 "handshake") from None
            except ssl.SSLError:
                self._flush_quietly()  # the alert tells the client why
                raise
        self._flush()

    @property
    def server_name(self) -> str | None:
        """The name the client sent in its SNI extension, if it sent one."""
        return getattr(self._tls, "fwdproxy_sni", None)

    @property
    def version(self) -> str | None:
        return self._tls.version()

    def recv_into(self, buffer: memoryview | bytearray) -> int:
        while True:
            try:
                return int(self._tls.read(len(buffer), buffer))  # with a buffer: a count
            except ssl.SSLWantReadError:
                self._flush()  # e.g. a TLS 1.3 key update to answer
                if not self._fill():
                    continue  # the read now reports how the stream ended
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a bare TCP close: clients often just hang up between
                # requests, and a truncated message is caught by HTTP framing.
                return 0

    def recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[:self.recv_into(buffer)])

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                written = self._tls.write(view[:WRITE_SIZE])
            except ssl.SSLWantReadError:  # renegotiation-like traffic first
                self._flush()
                if not self._fill():
                    raise BrokenPipeError("the client closed its TLS session") from None
                continue
            view = view[written:]
            self._flush()

    def makefile(self, mode: str = "rb", buffering: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only 'rb' is supported")
        return io.BufferedReader(_RawTLS(self), buffering)

    def close_notify(self) -> None:
        """Tell the client the session ends (RFC 8446 section 6.1), without waiting for it."""
        try:
            self._tls.unwrap()
        except (ssl.SSLError, OSError):
            pass
        self._flush_quietly()

    # Socket calls that concern the connection, not the session, go to the raw socket.
    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.sock.setsockopt(level, option, value)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _fill(self) -> bool:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            self._incoming.write_eof()
            return False
        self.bytes_in += len(data)
        self._incoming.write(data)
        return True

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)
            self.bytes_out += len(data)

    def _flush_quietly(self) -> None:
        data = self._outgoing.read()
        if data:
            try:
                self.sock.send(data, socket.MSG_DONTWAIT)
                self.bytes_out += len(data)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<TLSStream {self.version} sni={self.server_name!r} in={self.bytes_in} out={self.bytes_out}>"


class _RawTLS(io.RawIOBase):
    def __init__(self, stream: TLSStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self._stream.recv_into(buffer)
