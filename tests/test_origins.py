"""The loopback origin the plugin and the suite share: what it records, and how it fails."""

from __future__ import annotations

import logging
import socket

import pytest

from proxy.testing.origins import Origin, OriginConnection, OriginRequest


def send(origin: Origin, data: bytes) -> bytes:
    """Send raw bytes straight to the origin and read until it closes."""
    with socket.create_connection(origin.address, timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while piece := sock.recv(65536):
            received += piece
        return received


CHUNKED = b"POST /up HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_body_is_recorded_with_its_connection() -> None:
    with Origin() as origin:
        answer = send(origin, CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    (got,) = origin.requests
    assert (got.method, got.path, got.version, got.body, got.connection) == ("POST", "/up", "HTTP/1.1", b"hello", 1)


def test_a_broken_chunk_size_closes_quietly(capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    with Origin() as origin:
        answer = send(origin, CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n")
    assert answer == b""  # no response to a request whose body cannot be read
    assert origin.requests == []
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.name == "fwdproxy.origin"]


def test_a_failing_route_is_logged_not_printed(capfd: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(conn: OriginConnection, request: OriginRequest) -> None:
        raise ValueError("a bug in the test's route")

    with caplog.at_level(logging.ERROR, logger="fwdproxy.origin"), Origin() as origin:
        origin.routes["/broken"] = broken
        assert send(origin, b"GET /broken/1 HTTP/1.1\r\nHost: o\r\n\r\n") == b""
        assert send(origin, b"GET /fine HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")  # other paths go to the handler
    assert "Traceback" not in capfd.readouterr().err
    (record,) = [r for r in caplog.records if r.name == "fwdproxy.origin"]
    assert record.exc_info is not None and "a bug in the test's route" in str(record.exc_info[1])


def test_an_ipv6_origin_names_itself_in_brackets() -> None:
    with Origin(host="::1") as origin:
        assert origin.url("/x") == f"http://[::1]:{origin.port}/x"
        assert send(origin, b"GET /x HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").endswith(b"GET /x\n")
