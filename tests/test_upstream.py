"""Parent proxies: chaining through a second fwdproxy and through tinyproxy, bypass, loops, failures."""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from client_fixtures import TinyProxy, free_port, tinyproxy, tinyproxy_binary  # noqa: F401
from conftest import RunningProxy
from servers import OriginServer, RawOrigin
from wire import echoed, exchange

from proxy import Config, ProxyServer
from proxy.testing.pytest_plugin import FwdProxy
from proxy.testing.pytest_plugin import Origin as PluginOrigin

Chain = Callable[..., RunningProxy]


@pytest.fixture
def chain() -> Iterator[Callable[..., RunningProxy]]:
    """``chain(port=..., **config)``: proxies with any settings, stopped after the test."""
    servers: list[ProxyServer] = []

    def make(port: int = 0, **settings: Any) -> RunningProxy:
        server = ProxyServer(Config(port=port, **settings), sinks=[]).start()
        servers.append(server)
        return RunningProxy(server)

    yield make
    for server in servers:
        server.stop(grace=0)


def parent_url(proxy: RunningProxy, creds: str = "") -> str:
    return f"http://{creds + '@' if creds else ''}127.0.0.1:{proxy.server.port}"


def curl(proxy: RunningProxy, url: str, ca_file: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy.url, "--cacert", ca_file, url],
                         capture_output=True, timeout=30, check=True)
    return out.stdout


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def head_of(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in fields.items()}, body


def get(proxy: RunningProxy, url: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    data = f"GET {url} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
    return head_of(exchange(proxy.address, data))


def connect(proxy: RunningProxy, target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (piece := sock.recv(65536)):
            data += piece
        if not data.startswith(b"HTTP/1.1 200"):
            while piece := sock.recv(65536):
                data += piece
    return head_of(data)


# -- chained through a second fwdproxy with credentials -----------------------------------

def test_plain_http_goes_to_the_parent_in_absolute_form_with_its_credentials(chain: Chain, origin: OriginServer) -> None:
    back = chain(auth=(("pu", "pw"),))
    front = chain(auth=(("cu", "cp"),), upstream_proxy=parent_url(back, "pu:pw"))
    proxies = {"http": f"http://cu:cp@127.0.0.1:{front.server.port}"}
    resp = requests.get(origin.url("/echo?q=1"), proxies=proxies, timeout=10)
    assert resp.status_code == 200 and echoed(resp.content)["target"] == "/echo?q=1"
    seen = origin.received[-1]
    assert seen.all("Via") == [f"1.1 {front.server.via_name}", f"1.1 {back.server.via_name}"]
    assert seen.header("Proxy-Authorization") is None
    (at_back,) = back.wait_flows(1)
    assert at_back.url == origin.url("/echo?q=1") and at_back.status == 200  # absolute-form arrived
    (at_front,) = front.wait_flows(1)
    assert at_front.parent == f"127.0.0.1:{back.server.port}"
    assert f" parent=127.0.0.1:{back.server.port}" in at_front.as_line()


def test_client_credentials_are_never_sent_to_the_parent(chain: Chain, origin: OriginServer) -> None:
    # The parent wants the client's own credentials: only the configured ones may reach it.
    back = chain(auth=(("cu", "cp"),))
    front = chain(auth=(("cu", "cp"),), upstream_proxy=parent_url(back))
    status, fields, body = get(front, origin.url("/echo"), f"Proxy-Authorization: {basic('cu', 'cp')}\r\n")
    assert status == 502 and b"requires credentials" in body
    assert "proxy-authenticate" not in fields  # the parent's 407 is not ours to pass on
    assert origin.received == []


def test_connect_goes_through_a_connect_to_the_parent(chain: Chain, tls_origin: OriginServer, ca_file: str) -> None:
    back = chain(auth=(("pu", "pw"),))
    front = chain(upstream_proxy=parent_url(back, "pu:pw"))
    resp = requests.get(tls_origin.url("/echo"), proxies={"https": front.url}, verify=ca_file, timeout=10)
    assert resp.status_code == 200 and echoed(resp.content)["target"] == "/echo"
    # curl closes its connection when it exits, which ends the tunnel and finishes its flows.
    out = curl(front, tls_origin.url("/echo"), ca_file)
    assert echoed(out)["target"] == "/echo"
    front_flow = next(f for f in front.wait_flows(1) if f.bytes_down)
    back_flow = next(f for f in back.wait_flows(1) if f.bytes_down)
    assert front_flow.kind == back_flow.kind == "tunnel"
    assert back_flow.target == ("127.0.0.1", tls_origin.port) and front_flow.parent.endswith(str(back.server.port))
    assert back_flow.bytes_down == front_flow.bytes_down > 0


def test_curl_through_a_chain(chain: Chain, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    back = chain(auth=(("pu", "p:w"),))
    front = chain(upstream_proxy=parent_url(back, "pu:p%3Aw"))  # percent-encoded colon in the password
    for url in (origin.url("/echo"), tls_origin.url("/echo")):
        assert echoed(curl(front, url, ca_file))["target"] == "/echo"


def test_parent_connections_are_pooled_across_origins(chain: Chain, origin: OriginServer) -> None:
    back = chain()
    front = chain(upstream_proxy=parent_url(back))
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(origin.url("/echo"), proxies={"http": front.url}, timeout=10).ok
    with OriginServer() as other:  # another origin: the same connection to the parent
        assert requests.get(other.url("/echo"), proxies={"http": front.url}, timeout=10).ok
    assert front.server.pool.opened == 1 and front.server.pool.reused == 3
    assert [f.upstream_reused for f in front.wait_flows(4)] == [False, True, True, True]


def test_bypass_goes_direct(chain: Chain, origin: OriginServer) -> None:
    back = chain()
    front = chain(upstream_proxy=parent_url(back), upstream_bypass=("localhost,10.0.0.0/8,127.0.0.0/8",))
    status, _, _body = get(front, origin.url("/echo"))
    assert status == 200 and origin.received[-1].all("Via") == [f"1.1 {front.server.via_name}"]
    assert front.wait_flows(1)[0].parent == ""
    assert back.flows == []


def test_bypass_by_port_only_matches_that_port(chain: Chain, origin: OriginServer) -> None:
    back = chain()
    front = chain(upstream_proxy=parent_url(back), upstream_bypass=("127.0.0.1:1",))
    status, _, _ = get(front, origin.url("/echo"))
    assert status == 200 and origin.received[-1].all("Via")[-1] == f"1.1 {back.server.via_name}"


def test_per_host_routes_pick_the_parent_or_direct(chain: Chain, origin: OriginServer) -> None:
    default, special = chain(), chain()
    with OriginServer() as other, OriginServer() as local:
        front = chain(upstream_proxy=parent_url(default), upstream_routes=(
            f"127.0.0.1:{other.port}={parent_url(special)}", f"127.0.0.1:{local.port}=direct"))
        for server in (origin, other, local):
            assert get(front, server.url("/echo"))[0] == 200
        vias = [server.received[-1].all("Via")[-1] for server in (origin, other, local)]
    assert vias == [f"1.1 {default.server.via_name}", f"1.1 {special.server.via_name}",
                    f"1.1 {front.server.via_name}"]
    assert [f.parent for f in front.wait_flows(3)] == [parent_url(default)[7:], parent_url(special)[7:], ""]
    assert front.server.pool.opened == 3  # one connection per parent, one to the direct origin


def test_http_proxy_variables_are_never_the_servers_parent(chain: Chain, origin: OriginServer, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    assert get(chain(), origin.url("/echo"))[0] == 200
    assert get(chain(upstream_proxy=dead), origin.url("/echo"))[0] == 502  # negative control


def test_deny_private_still_reaches_a_private_parent_but_judges_literal_targets(chain: Chain, raw_origin: Callable[..., RawOrigin]) -> None:
    parent = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    front = chain(upstream_proxy=f"http://{parent.authority}", deny_private=True)
    status, _, body = get(front, "http://origin.test/")  # the parent resolves names: sent on
    assert status == 200 and body == b"ok"
    assert get(front, "http://10.1.2.3/")[0] == 403
    assert connect(front, "127.0.0.1:443")[0] == 403
    assert len(parent.received) == 1


# -- loops through parents -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_a_loop_through_parents_is_refused_with_508(chain: Chain, origin: OriginServer, kind: str) -> None:
    port_a = free_port()
    b = chain(upstream_proxy=f"http://127.0.0.1:{port_a}")
    a = chain(port=port_a, upstream_proxy=parent_url(b))
    if kind == "plain":
        status, fields, _body = get(a, origin.url("/echo"))
    else:
        status, fields, _body = connect(a, origin.authority)
    assert status == 508 and "proxy_loop_detected" in fields["proxy-status"]
    assert origin.received == [] and len(a.wait_flows(2)) == 2  # A saw it once, then refused it


def test_bytes_after_the_parents_connect_answer_stay_in_the_tunnel(chain: Chain, raw_origin: Callable[..., RawOrigin]) -> None:
    # A server that speaks first (SMTP, SSH): its banner may arrive with the parent's 200.
    parent = raw_origin(b"HTTP/1.1 200 Connection established\r\nX-Hop: 1\r\n\r\n220 banner\r\n")
    front = chain(upstream_proxy=f"http://{parent.authority}")
    with socket.create_connection(front.address, timeout=10) as sock:
        sock.sendall(b"CONNECT mail.test:25 HTTP/1.1\r\nHost: mail.test:25\r\n\r\n")
        data = b""
        while piece := sock.recv(65536):
            data += piece
    assert data == b"HTTP/1.1 200 Connection Established\r\n\r\n220 banner\r\n"
    sent = parent.received[0].decode()
    assert sent.startswith("CONNECT mail.test:25 HTTP/1.1\r\nHost: mail.test:25\r\n")
    assert f"Via: 1.1 {front.server.via_name}\r\n" in sent and "Proxy-Authorization" not in sent


# -- tinyproxy as the parent -----------------------------------------------------------

def test_plain_and_connect_through_tinyproxy(chain: Chain, tinyproxy: Callable[..., TinyProxy], origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:  # noqa: F811
    tp = tinyproxy(auth="tu:tp")
    front = chain(upstream_proxy=tp.url.replace("//", "//tu:tp@"))
    plain = requests.get(origin.url("/echo"), proxies={"http": front.url}, timeout=10)
    assert plain.status_code == 200
    vias = ", ".join(origin.received[-1].all("Via"))
    assert front.server.via_name in vias and "tinyproxy" in vias
    assert echoed(curl(front, tls_origin.url("/echo"), ca_file))["target"] == "/echo"
    assert tls_origin.received[-1].header("Via") is None  # a tunnel: nobody saw the request
    assert all(f.parent == tp.url.removeprefix("http://") for f in front.wait_flows(2))


def test_tinyproxy_without_our_credentials_is_a_502(chain: Chain, tinyproxy: Callable[..., TinyProxy], tls_origin: OriginServer) -> None:  # noqa: F811
    tp = tinyproxy(auth="tu:tp")
    front = chain(upstream_proxy=tp.url)
    status, fields, body = connect(front, tls_origin.authority)
    assert status == 502 and tp.url.removeprefix("http://").encode() in body
    assert f'next-hop="{tp.url.removeprefix("http://")}"' in fields["proxy-status"]


# -- parent failures ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_unreachable_parent_is_a_502_naming_it(chain: Chain, origin: OriginServer, kind: str) -> None:
    port = free_port()
    front = chain(upstream_proxy=f"http://127.0.0.1:{port}")
    status, fields, body = (get(front, origin.url("/echo")) if kind == "plain"
                            else connect(front, origin.authority))
    assert status == 502 and f"parent proxy 127.0.0.1:{port}".encode() in body
    assert "error=connection_refused" in fields["proxy-status"]
    assert f'next-hop="127.0.0.1:{port}"' in fields["proxy-status"]


def test_parent_refusing_connect_is_a_502(chain: Chain, origin: OriginServer) -> None:
    back = chain(connect_ports=frozenset({1}))
    front = chain(upstream_proxy=parent_url(back))
    status, fields, body = connect(front, origin.authority)
    assert status == 502 and b"refused CONNECT" in body and b"403" in body
    assert "next-hop" in fields["proxy-status"]
    assert connect(chain(upstream_proxy=parent_url(chain())), origin.authority)[0] == 200  # control


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_parent_407_is_a_502_never_passed_on(chain: Chain, origin: OriginServer, kind: str) -> None:
    back = chain(auth=(("pu", "pw"),))
    wrong = chain(upstream_proxy=parent_url(back, "pu:nope"))
    status, fields, body = (get(wrong, origin.url("/echo")) if kind == "plain"
                            else connect(wrong, origin.authority))
    assert status == 502 and b"rejected our credentials (407)" in body
    assert "proxy-authenticate" not in fields and "next-hop" in fields["proxy-status"]
    right = chain(upstream_proxy=parent_url(back, "pu:pw"))
    assert (get(right, origin.url("/echo")) if kind == "plain" else connect(right, origin.authority))[0] == 200


def test_parent_closing_mid_response_is_a_502(chain: Chain, raw_origin: Callable[..., RawOrigin]) -> None:
    parent = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    front = chain(upstream_proxy=f"http://{parent.authority}")
    status, _fields, body = get(front, "http://origin.test/")
    assert status == 502 and f"parent proxy {parent.authority} sent 5 of 100".encode() in body
    assert parent.received[0].startswith(b"GET http://origin.test/ HTTP/1.1\r\n")


def test_parent_closing_without_a_response_is_a_502(chain: Chain, raw_origin: Callable[..., RawOrigin]) -> None:
    parent = raw_origin(b"")
    front = chain(upstream_proxy=f"http://{parent.authority}")
    for status, fields, body in (get(front, "http://origin.test/"), connect(front, "origin.test:443")):
        assert status == 502 and parent.authority.encode() in body
        assert f'next-hop="{parent.authority}"' in fields["proxy-status"]


def test_silent_parent_is_a_504(chain: Chain, raw_origin: Callable[..., RawOrigin]) -> None:
    parent = raw_origin(b"", then="hang")
    front = chain(upstream_proxy=f"http://{parent.authority}", timeout=0.5)
    for status, fields, body in (get(front, "http://origin.test/"), connect(front, "origin.test:443")):
        assert status == 504 and parent.authority.encode() in body
        assert "next-hop" in fields["proxy-status"]


def test_the_parents_answer_is_read_exactly_however_it_arrives() -> None:
    from proxy.server.dialler import _read_reply
    from proxy.server.routing import Parent

    ours, theirs = socket.socketpair()
    reply = b"HTTP/1.0 200 Connection established\r\nX: y\r\n\r\nBANNER"

    def trickle() -> None:  # one byte a send: the reader sees the head cut at every point
        for i in range(len(reply)):
            theirs.sendall(reply[i:i + 1])

    sender = threading.Thread(target=trickle)
    sender.start()
    with ours, theirs:
        ours.settimeout(10)
        assert _read_reply(ours, Parent("p", 1)) == (200, "Connection established")
        sender.join(10)
        assert ours.recv(100) == b"BANNER"


def test_bad_settings_fail_at_construction_not_at_first_request() -> None:
    from proxy.config import ConfigError

    for settings in ({"upstream_proxy": "ftp://p:1"}, {"rewrite_rules": (("block", "*=99"),)},
                     {"upstream_bypass": ("10.0.0.0/40",)}):
        with pytest.raises(ConfigError):
            ProxyServer(Config(port=0, **settings), sinks=[])


def test_names_go_to_the_parent_unresolved_with_the_plugins_proxies(fwdproxy: FwdProxy, fwdproxy_factory: Callable[..., FwdProxy], origin_http: PluginOrigin) -> None:
    # The plugin's proxy is the parent and knows api.test; the front proxy never resolves it.
    fwdproxy.map_host("api.test", origin_http)
    origin_http.respond(200, b"from the parent's side")
    front = fwdproxy_factory(upstream_proxy=fwdproxy.url)
    resp = requests.get("http://api.test/items", proxies={"http": front.url}, timeout=10)
    assert resp.status_code == 200 and resp.content == b"from the parent's side"
    assert fwdproxy.flows.one(host="api.test").path == "/items"
    assert front.flows.one(host="api.test").parent == fwdproxy.url.removeprefix("http://")
