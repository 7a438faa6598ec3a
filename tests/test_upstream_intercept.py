"""Intercepted HTTPS with a parent proxy and rewrite rules: the decrypted requests take the same path."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from proxy.testing.pytest_plugin import FwdProxy, Origin, OriginReply, OriginRequest


def echo(request: OriginRequest) -> OriginReply:
    return OriginReply(200, f"{request.method} {request.path} {request.header('X-Env')}".encode(),
                       [("Content-Type", "text/plain"), ("Set-Cookie", "s=1")])


def curl(proxy: FwdProxy, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--cacert", proxy.ca_file, "-x", proxy.url, *args, url],
                          capture_output=True, text=True, timeout=30)


def test_intercepted_https_reaches_its_origin_through_a_connect_to_the_parent(
        fwdproxy: FwdProxy, fwdproxy_factory: Callable[..., FwdProxy], origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)  # only the parent knows where api.test is
    origin_https.handler = echo
    front = fwdproxy_factory(upstream_proxy=fwdproxy.url)
    front.intercept()
    out = curl(front, "https://api.test/items?q=1")
    assert (out.returncode, out.stdout) == (0, "GET /items?q=1 None")
    inner = front.flows.one(kind="http", path="/items?q=1")
    assert inner.intercepted and inner.upstream_tls == "verified"
    assert inner.parent == fwdproxy.url.removeprefix("http://")
    # The parent saw a blind tunnel to the origin: TLS ran end to end between front and origin.
    tunnel = fwdproxy.flows.one(kind="tunnel")
    assert tunnel.target == ("api.test", 443) and not tunnel.intercepted
    assert [r.path for r in origin_https.requests] == ["/items?q=1"]


def test_rewrite_rules_apply_inside_intercepted_tunnels(fwdproxy_factory: Callable[..., FwdProxy], origin_https: Origin,
                                                        tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("local()")
    origin_https.handler = echo
    front = fwdproxy_factory(rewrite_rules=(
        ("set-header", "https://api.test/*=X-Env: staging"),
        ("remove-header", "response:https://api.test/*=Set-Cookie"),
        ("block", "https://api.test/ads/*=451"),
        ("map-local", f"https://api.test/static/*={tmp_path}"),
    ))
    front.map_host("api.test", origin_https)
    front.intercept()
    forwarded = curl(front, "https://api.test/items", "-i")
    assert forwarded.returncode == 0 and forwarded.stdout.endswith("GET /items staging")
    assert "set-cookie" not in forwarded.stdout.lower()
    assert curl(front, "https://api.test/ads/x.js", "-o", "/dev/null", "-w", "%{http_code}").stdout == "451"
    local = curl(front, "https://api.test/static/app.js", "-i")
    assert local.stdout.endswith("local()") and "javascript" in local.stdout.lower()
    assert [r.path for r in origin_https.requests] == ["/items"]  # the block and the file never went out
    assert front.flows.one(kind="http", path="/ads/x.js").rules == ["block https://api.test/ads/*=451"]
