"""Interception seen by clients outside Python: Node (https + https-proxy-agent) and headless Chromium.

``./scripts/test`` installs them (Debian's ``chromium`` and ``libnss3-tools``,
and the npm packages into tests/node/node_modules). Chromium is pointed at
the proxy by a PAC script that sends api.test to it and everything else to a
closed loopback port, its resolver maps every name to "not found", and the
plugin's proxy is offline: nothing the browser does leaves the machine.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from proxy.testing.pytest_plugin import FwdProxy, Origin, OriginReply, OriginRequest

NODE = Path(__file__).resolve().parent / "node"
PAGE = b"<html><head><title>t</title></head><body><p id=greeting>hello from the origin</p></body></html>"


@pytest.fixture
def api(fwdproxy: FwdProxy, origin_https: Origin) -> Origin:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept("api.test")

    def answer(request: OriginRequest) -> OriginReply:
        if request.path == "/page":
            return OriginReply(200, PAGE, [("Content-Type", "text/html; charset=utf-8")])
        return OriginReply(201, b"seen " + request.body, [("Content-Type", "text/plain")])

    origin_https.handler = answer
    return origin_https


def node(proxy: FwdProxy, url: str, *, ca_file: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NODE_EXTRA_CA_CERTS"}
    if ca_file:
        env["NODE_EXTRA_CA_CERTS"] = ca_file  # what `fwdproxy ca env` exports
    return subprocess.run(["node", str(NODE / "request.js"), proxy.url, "POST", url, "ping", "X-Token", "abc"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=NODE)


@pytest.mark.usefixtures("node_packages")
def test_node_https_through_a_proxy_agent(fwdproxy: FwdProxy, api: Origin) -> None:
    out = node(fwdproxy, "https://api.test/items?q=1", ca_file=fwdproxy.ca_file)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": 201, "body": "seen ping"}
    flow = fwdproxy.flows.one(kind="http")
    assert (flow.method, flow.url, flow.intercepted) == ("POST", "https://api.test/items?q=1", True)
    assert ("X-Token", "abc") in flow.request_headers and flow.request_body == b"ping"
    assert flow.response_body == b"seen ping"


@pytest.mark.usefixtures("node_packages")
def test_node_without_the_ca_gets_nothing_through(fwdproxy: FwdProxy, api: Origin) -> None:
    out = node(fwdproxy, "https://api.test/items", ca_file=None)
    assert out.returncode == 1 and "UNABLE_TO_VERIFY_LEAF_SIGNATURE" in out.stderr
    assert api.requests == []


def chromium(proxy: FwdProxy, url: str, tmp_path: Path, *, ca_file: str | None) -> tuple[str, str]:
    """The DOM of url as headless Chromium renders it, and what it logged, trusting ca_file (through
    an NSS db) if given."""
    home = tmp_path / "home"
    nssdb = f"sql:{home}/.pki/nssdb"  # where Chromium on Linux reads trusted certificates
    (home / ".pki" / "nssdb").mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", nssdb, "--empty-password"], check=True, timeout=30)
    if ca_file:
        subprocess.run(["certutil", "-A", "-d", nssdb, "-n", "fwdproxy test CA", "-t", "C,,", "-i", ca_file],
                       check=True, timeout=30)
    pac = ('function FindProxyForURL(url, host) { return host == "api.test" ? '
           f'"PROXY 127.0.0.1:{proxy.port}" : "PROXY 127.0.0.1:1"; }}')
    out = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}",
         "--proxy-pac-url=data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(pac.encode()).decode(),
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


@pytest.mark.slow  # a browser start takes a second or more
def test_chromium_with_the_ca_in_its_nss_db(fwdproxy: FwdProxy, api: Origin, tmp_path: Path) -> None:
    dom, _ = chromium(fwdproxy, "https://api.test/page", tmp_path, ca_file=fwdproxy.ca_file)
    assert '<p id="greeting">hello from the origin</p>' in dom
    flow = fwdproxy.flows.one(kind="http", path="/page")
    assert (flow.url, flow.status, flow.response_body) == ("https://api.test/page", 200, PAGE)
    user_agent = dict(flow.request_headers)["User-Agent"]
    assert "Chrome/" in user_agent
    assert all(f.host == "api.test" for f in fwdproxy.flows.all())  # the PAC sent nothing else our way


@pytest.mark.slow
def test_chromium_without_the_ca_shows_a_privacy_error(fwdproxy: FwdProxy, api: Origin, tmp_path: Path) -> None:
    dom, log = chromium(fwdproxy, "https://api.test/page", tmp_path, ca_file=None)
    assert "hello from the origin" not in dom
    # Older headless builds render the interstitial; newer ones log the failed load and dump nothing.
    assert "Privacy error" in dom or "ERR_CERT_AUTHORITY_INVALID" in log
    assert api.requests == []
    tunnels = fwdproxy.flows.filter(kind="tunnel")
    assert tunnels and all("CERTIFICATE_UNKNOWN" in t.error for t in tunnels)
    assert len(tunnels) <= 3  # a browser's retry or two, not a storm
