"""``fwdproxy fetch``: flags, output and curl's exit statuses, through our proxy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer

if TYPE_CHECKING:
    from conftest import RunningProxy

import argparse
import json
import os
import subprocess
import sys
from urllib.parse import quote

from client_fixtures import *  # noqa: F403
from client_fixtures import add_redirects, free_port

from proxy.client import fetch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fetch_main(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fwdproxy")
    fetch.add_parser(parser.add_subparsers(dest="command"))
    return fetch.run(parser.parse_args(["fetch", *argv]))


def test_get_writes_the_body_to_stdout(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer) -> None:
    assert fetch_main(origin.url("/bytes/20"), "-x", proxy.url) == 0
    assert capsysbinary.readouterr().out == b"0123456789abcdef0123"


def test_post_data_headers_and_include(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer) -> None:
    code = fetch_main(origin.url("/echo"), "-x", proxy.url, "-d", "a=1", "-H", "X-Test: yes", "-i")
    out = capsysbinary.readouterr().out
    head, _, body = out.partition(b"\r\n\r\n")
    assert code == 0 and head.startswith(b"HTTP/1.1 200 OK\r\n")
    sent = json.loads(body)
    assert (sent["method"], sent["body"]) == ("POST", "a=1")
    assert ["Content-Type", "application/x-www-form-urlencoded"] in sent["headers"]
    assert ["X-Test", "yes"] in sent["headers"]


def test_data_from_a_file_and_method_override(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(b"from file")
    assert fetch_main(origin.url("/echo"), "-x", proxy.url, "-X", "PUT", "-d", f"@{tmp_path / 'body'}") == 0
    assert (origin.received[-1].method, origin.received[-1].body) == ("PUT", b"from file")


def test_location_and_verbose_show_each_hop_and_the_connect(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer,
                                                           ca_file: str) -> None:
    add_redirects(origin)
    url = origin.url(f"/redirect?status=302&to={quote(tls_origin.url('/bytes/5'), safe='')}")
    code = fetch_main(url, "-x", proxy.url, "-L", "-v", "-i", "--cacert", ca_file)
    out, err = capsysbinary.readouterr()
    assert code == 0
    assert out.startswith(b"HTTP/1.1 302 Found\r\n") and b"\r\n\r\nHTTP/1.1 200 OK\r\n" in out
    assert out.endswith(b"\r\n\r\n01234")
    assert f"> CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1".encode() in err
    assert b"* redirect 302:" in err and b"< HTTP/1.1 302 Found" in err


def test_without_location_the_redirect_is_the_answer(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer) -> None:
    add_redirects(origin)
    assert fetch_main(origin.url("/redirect?status=301&to=/echo"), "-x", proxy.url) == 0
    assert capsysbinary.readouterr().out == b"moved"


def test_output_file(proxy: RunningProxy, origin: OriginServer, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    assert fetch_main(origin.url("/chunked/5000"), "-x", proxy.url, "-o", str(target)) == 0
    assert target.stat().st_size == 5000


def test_fail_flag(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, origin: OriginServer) -> None:
    assert fetch_main(origin.url("/status/404"), "-x", proxy.url) == 0
    assert fetch_main(origin.url("/status/404"), "-x", proxy.url, "-f") == 22


@pytest.mark.parametrize(("args", "code"), [
    (["http://127.0.0.1:9/", "-x", "http://127.0.0.1:{dead}"], 7),  # cannot connect
    (["https://127.0.0.1:{dead}/", "-x", "{proxy}"], 56),  # CONNECT refused (502)
    (["https://127.0.0.1:{tls}/echo", "-x", "{proxy}"], 35),  # certificate not trusted
    (["ftp://127.0.0.1/"], 3),  # bad URL
    (["http://127.0.0.1:9/", "-H", "no colon"], 2),  # usage
])
def test_exit_statuses(capsysbinary: pytest.CaptureFixture[bytes], proxy: RunningProxy, tls_origin: OriginServer, args: Any, code: Any) -> None:
    values = {"dead": free_port(), "proxy": proxy.url, "tls": tls_origin.port}
    assert fetch_main(*(a.format(**values) for a in args)) == code
    assert capsysbinary.readouterr().err.startswith(b"fwdproxy fetch: ")


def test_too_many_redirects_exit_status(capsysbinary: pytest.CaptureFixture[bytes], origin: OriginServer) -> None:
    add_redirects(origin)
    assert fetch_main(origin.url("/chain/3"), "-L", "--max-redirs", "2") == 47


def test_runs_as_a_module(proxy: RunningProxy, origin: OriginServer) -> None:
    out = subprocess.run([sys.executable, "-m", "proxy.client.fetch", origin.url("/bytes/3"), "-x", proxy.url],
                         capture_output=True, timeout=30, cwd=REPO)
    assert (out.returncode, out.stdout) == (0, b"012")
