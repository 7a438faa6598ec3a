"""Rewrite rules end to end, with curl and requests: map-remote, map-local, headers, block; bad rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from client_fixtures import free_port
from conftest import RunningProxy
from servers import OriginServer
from wire import echoed, exchange

Ruled = Callable[..., RunningProxy]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ruled(proxy_factory: Callable[..., RunningProxy]) -> Ruled:
    """``ruled(("block", "*.ads.test"), ..., port=0)``: a proxy with these rewrite rules."""

    def make(*rules: tuple[str, str], port: int = 0, **settings: Any) -> RunningProxy:
        return proxy_factory(port=port, rewrite_rules=rules, **settings)

    return make


@pytest.fixture
def dev_server() -> Iterator[OriginServer]:
    """A second origin: the local server requests get mapped to."""
    with OriginServer() as server:
        yield server


def curl(proxy: RunningProxy, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy.url, *args, url],
                          capture_output=True, timeout=30)


def via(proxy: RunningProxy) -> dict[str, str]:
    return {"http": proxy.url, "https": proxy.url}


# -- map-remote ---------------------------------------------------------------------------

def test_map_remote_sends_matching_requests_to_the_new_origin_and_prefix(ruled: Ruled, origin: OriginServer, dev_server: OriginServer) -> None:
    rule = f"http://127.0.0.1:{origin.port}/api/v1/*=http://127.0.0.1:{dev_server.port}/v2"
    proxy = ruled(("map-remote", rule))
    mapped = requests.get(origin.url("/api/v1/echo?x=1"), proxies=via(proxy), timeout=10)
    assert mapped.status_code == 200
    assert echoed(mapped.content)["target"] == "/v2/echo?x=1"
    assert dev_server.received[-1].header("Host") == dev_server.authority  # Host follows the target
    other = requests.get(origin.url("/echo"), proxies=via(proxy), timeout=10)  # no match: untouched
    assert echoed(other.content)["target"] == "/echo" and len(origin.received) == 1
    flows = proxy.wait_flows(2)
    assert flows[0].rules == [f"map-remote {rule}"] and flows[0].url == origin.url("/api/v1/echo?x=1")
    assert flows[1].rules == []


def test_map_remote_keep_host_keeps_the_clients_host(ruled: Ruled, origin: OriginServer, dev_server: OriginServer) -> None:
    proxy = ruled(("map-remote", f"keep-host:http://127.0.0.1:{origin.port}=http://127.0.0.1:{dev_server.port}"))
    out = curl(proxy, origin.url("/echo"))
    assert out.returncode == 0 and echoed(out.stdout)["target"] == "/echo"
    assert dev_server.received[-1].header("Host") == origin.authority and origin.received == []


def test_map_remote_to_an_https_origin_verifies_it(ruled: Ruled, origin: OriginServer, tls_origin: OriginServer,
                                                   ca_file: str) -> None:
    rule = f"http://127.0.0.1:{origin.port}/secure/*=https://localhost:{tls_origin.port}/"
    proxy = ruled(("map-remote", rule), upstream_ca=(ca_file,))
    mapped = requests.get(origin.url("/secure/echo"), proxies=via(proxy), timeout=10)
    assert mapped.status_code == 200 and echoed(mapped.content)["target"] == "/echo"
    assert tls_origin.received[-1].header("Host") == f"localhost:{tls_origin.port}" and origin.received == []
    untrusting = ruled(("map-remote", rule))  # the control: the origin's CA is not trusted
    refused = requests.get(origin.url("/secure/echo"), proxies=via(untrusting), timeout=10)
    assert refused.status_code == 502 and "tls_certificate_error" in refused.headers["Proxy-Status"]


def test_map_remote_to_the_proxy_itself_is_a_loop(ruled: Ruled, origin: OriginServer) -> None:
    port = free_port()
    proxy = ruled(("map-remote", f"*/loop/*=http://127.0.0.1:{port}/"), port=port)
    response = exchange(proxy.address, f"GET {origin.url('/loop/x')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 508") and b"proxy_loop_detected" in response
    assert curl(proxy, origin.url("/echo")).returncode == 0  # still serving


# -- map-local ------------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "css").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "css" / "style.css").write_text("body{}")
    (root / "data.json").write_text('{"ok": true}')
    (tmp_path / "secret.txt").write_text("do not serve")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


def test_map_local_answers_from_a_folder_with_guessed_types(ruled: Ruled, site: Path) -> None:
    proxy = ruled(("map-local", f"http://site.test/static/*={site}"))
    with requests.Session() as session:  # one kept-alive connection for all of them
        css = session.get("http://site.test/static/css/style.css", proxies=via(proxy), timeout=10)
        index = session.get("http://site.test/static/", proxies=via(proxy), timeout=10)
        data = session.get("http://site.test/static/data.json?v=2", proxies=via(proxy), timeout=10)
    assert (css.status_code, css.text, css.headers["Content-Type"]) == (200, "body{}", "text/css")
    assert index.text == "<h1>home</h1>" and index.headers["Content-Type"] == "text/html"
    assert data.json() == {"ok": True} and data.headers["Content-Type"] == "application/json"
    assert all(f.rules == [f"map-local http://site.test/static/*={site}"] for f in proxy.wait_flows(3))


def test_map_local_file_answers_every_match(ruled: Ruled, site: Path) -> None:
    proxy = ruled(("map-local", f"*.site.test/config*={site / 'data.json'}"))
    out = curl(proxy, "http://api.site.test/config/anything?x=1", "-i")
    assert out.stdout.startswith(b"HTTP/1.1 200") and out.stdout.endswith(b'{"ok": true}')
    head = curl(proxy, "http://api.site.test/config", "-I").stdout
    assert b"Content-Length: 12" in head and not head.endswith(b"}")


@pytest.mark.parametrize("path, status", [
    ("/static/../secret.txt", 403),
    ("/static/%2e%2e/secret.txt", 403),
    ("/static/css/%2E%2E/%2E%2E/secret.txt", 403),
    ("/static/escape", 403),  # a symlink out of the folder
    ("/static/missing.txt", 404),
])
def test_map_local_never_leaves_its_folder(ruled: Ruled, site: Path, path: str, status: int) -> None:
    proxy = ruled(("map-local", f"http://site.test/static/*={site}"))
    out = curl(proxy, f"http://site.test{path}", "--path-as-is", "-i")
    assert out.stdout.startswith(f"HTTP/1.1 {status}".encode()) and b"do not serve" not in out.stdout
    assert b"Proxy-Status:" in out.stdout


def test_map_local_takes_only_get_and_head(ruled: Ruled, site: Path) -> None:
    proxy = ruled(("map-local", f"http://site.test/*={site}"))
    resp = requests.post("http://site.test/data.json", data=b"x" * 1000, proxies=via(proxy), timeout=10)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, HEAD"


# -- header rules ------------------------------------------------------------------------------

def test_set_and_remove_request_headers(ruled: Ruled, origin: OriginServer) -> None:
    proxy = ruled(("set-header", f"http://127.0.0.1:{origin.port}/*=X-Env: staging"),
                  ("remove-header", "*=Cookie"),
                  ("set-header", "*/named=Host: api.internal"))
    resp = requests.get(origin.url("/echo"), headers={"X-Env": "prod", "Cookie": "a=1"},
                        proxies=via(proxy), timeout=10)
    fields = [tuple(f) for f in echoed(resp.content)["headers"]]
    assert ("X-Env", "staging") in fields and ("X-Env", "prod") not in fields
    assert not any(name.lower() == "cookie" for name, _ in fields)
    assert origin.received[-1].header("Host") == origin.authority
    requests.get(origin.url("/named"), proxies=via(proxy), timeout=10)
    assert origin.received[-1].header("Host") == "api.internal"
    assert proxy.wait_flows(1)[0].rules == [f"set-header http://127.0.0.1:{origin.port}/*=X-Env: staging",
                                            "remove-header *=Cookie"]


def test_set_and_remove_response_headers(ruled: Ruled, origin: OriginServer) -> None:
    proxy = ruled(("set-header", "response:*=X-Served-By: fwdproxy"),
                  ("remove-header", "response:*/cookies=Set-Cookie"))
    out = curl(proxy, origin.url("/cookies"), "-i").stdout
    assert b"X-Served-By: fwdproxy\r\n" in out and b"Set-Cookie" not in out
    assert b"Set-Cookie" in curl(ruled(), origin.url("/cookies"), "-i").stdout  # control: no rules


# -- block ---------------------------------------------------------------------------------------

def test_block_refuses_matching_requests_with_a_status(ruled: Ruled, origin: OriginServer) -> None:
    proxy = ruled(("block", "*/ads/*=451"), ("block", "*.tracker.test"))
    blocked = requests.get(origin.url("/ads/banner.js"), proxies=via(proxy), timeout=10)
    assert blocked.status_code == 451 and "blocked by rule block */ads/*=451" in blocked.text
    assert "error=http_request_denied" in blocked.headers["Proxy-Status"]
    assert requests.get(origin.url("/echo"), proxies=via(proxy), timeout=10).status_code == 200
    assert [r.target for r in origin.received] == ["/echo"]
    assert "rules='block */ads/*=451'" in proxy.wait_flows(1)[0].as_line()
    tracked = curl(proxy, "https://cdn.tracker.test/x.js")  # a CONNECT: refused without a DNS lookup
    assert tracked.returncode != 0 and b"403" in tracked.stderr


# -- bad rules and settings at start --------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--map-remote", "http://a.test/*"], "rule --map-remote 'http://a.test/*': expected URL_GLOB="),
    (["--map-remote", "*=ftp://x"], "must be an http:// or https:// URL"),
    (["--map-local", "*=/no/such/folder"], "does not exist"),
    (["--map-local", "*=/tmp/../etc"], "must not contain '..'"),
    (["--set-header", "*=Content-Length: 1"], "framing or hop-by-hop"),
    (["--set-header", "*=X-A"], "expected URL_GLOB=Name: value"),
    (["--remove-header", "*=Bad Name"], "invalid header name"),
    (["--block", "gopher://x"], "scheme 'gopher'"),
    (["--block", "*=99"], "must be 400..599"),
    (["--upstream-proxy", "socks5://127.0.0.1:1080"], "scheme 'socks5' is not supported"),
    (["--upstream-proxy", "http://user@127.0.0.1:3128"], "credentials must be user:password@"),
    (["--upstream-proxy", "http://127.0.0.1"], "needs a host and a port"),
    (["--upstream-bypass", "10.0.0.0/99"], "is not a valid CIDR"),
    (["--upstream-route", "api.test"], "must be HOSTS=http://host:port or HOSTS=direct"),
])
def test_bad_rules_stop_the_start_with_one_clear_line(args: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "--port", "0", *args], capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_rule_flags_become_config_rules_kind_by_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.cli import parse_config

    monkeypatch.setenv("FWDPROXY_UPSTREAM_PROXY", "http://u:p@127.0.0.1:3128")
    monkeypatch.setenv("FWDPROXY_UPSTREAM_ROUTE", "a.test,b.test=direct;c.test=http://127.0.0.1:1")
    config = parse_config(["--remove-header", "*=X-A", "--set-header", "*=X-A: 1", "--block", "a.test",
                           "--set-header", "*=X-B: 2", "--upstream-bypass", "localhost,.lan"])
    assert config.rewrite_rules == (("block", "a.test"), ("set-header", "*=X-A: 1"),
                                    ("set-header", "*=X-B: 2"), ("remove-header", "*=X-A"))
    assert config.upstream_proxy == "http://u:p@127.0.0.1:3128"
    assert config.upstream_routes == ("a.test,b.test=direct", "c.test=http://127.0.0.1:1")
    assert config.upstream_bypass == ("localhost,.lan",)


def test_a_reload_swaps_the_rules_and_the_parent(ruled: Ruled, origin: OriginServer) -> None:
    proxy = ruled()
    assert requests.get(origin.url("/echo"), proxies=via(proxy), timeout=10).status_code == 200
    server = proxy.server
    server.apply_config(server.config.replace(rewrite_rules=(("block", "*/echo=410"),)))
    assert requests.get(origin.url("/echo"), proxies=via(proxy), timeout=10).status_code == 410
    dead = f"http://127.0.0.1:{free_port()}"
    server.apply_config(server.config.replace(rewrite_rules=(), upstream_proxy=dead))
    resp = requests.get(origin.url("/echo"), proxies=via(proxy), timeout=10)
    assert resp.status_code == 502 and dead.removeprefix("http://") in resp.text


def test_sighup_reloads_rules_and_routes_from_the_file(ruled: Ruled, origin: OriginServer, tmp_path: Path) -> None:
    from proxy import cli
    from proxy.server.reload import Reloader

    path = tmp_path / "fwdproxy.toml"
    path.write_text('block = ["*/old"]\n')
    load = lambda: cli.load_config(["--config", str(path), "--port", "0"]).config  # noqa: E731
    proxy = ruled(("block", "*/old"))
    reloader = Reloader(proxy.server, load, str(path))
    path.write_text('block = ["*/new=451"]\nupstream-route = ["127.0.0.1:1=direct"]\n')
    assert reloader.reload()
    assert requests.get(origin.url("/new"), proxies=via(proxy), timeout=10).status_code == 451
    assert requests.get(origin.url("/old"), proxies=via(proxy), timeout=10).status_code == 200
    assert proxy.server.config.upstream_routes == ("127.0.0.1:1=direct",)
    path.write_text('block = ["*=99"]\n')  # a bad rule: refused, the running rules stay
    assert not reloader.reload()
    assert requests.get(origin.url("/new"), proxies=via(proxy), timeout=10).status_code == 451
