"""The proxy auto-config file served at ``GET /proxy.pac``: JavaScript naming this proxy.

Pure text generation. Hosts in the bypass list (``--upstream-bypass``) are
answered DIRECT, the rest go to this proxy. Names are never resolved by the
generated script (``isInNet`` on a name makes the browser do a DNS lookup
for every URL): networks are only compared with hosts that are address
literals. Only validated values reach the script, so nothing in it comes
from a request unchecked.
"""

from __future__ import annotations

import ipaddress
import json

from ..http1.errors import ProxyError
from ..http1.target import parse_authority
from .routing import BypassEntry, RouteRule

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"

_HEAD = """\
// Proxy auto-config for fwdproxy. Hosts in its bypass list go direct.
function FindProxyForURL(url, host) {
    host = host.toLowerCase();
    var port = url.match(/^[a-z][a-z0-9+.-]*:\\/\\/(?:[^\\/?#@]*@)?(?:\\[[^\\]]*\\]|[^\\/?#:]*):([0-9]+)/i);
    port = port ? parseInt(port[1], 10) : (url.substring(0, 6).toLowerCase() == "https:" ? 443 : 80);
    var ipv4 = /^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host);
"""


def pac_file(proxy_authority: str, bypass: tuple[BypassEntry, ...] = (),
             routes: tuple[RouteRule, ...] = ()) -> str:
    """The PAC script: ``PROXY host:port`` except for hosts routed direct or bypassed.

    Per-host routes come first, as the proxy tries them: one through a parent still
    goes to this proxy, which forwards it there; one marked direct goes DIRECT.
    """
    ours = json.dumps("PROXY " + proxy_authority)
    lines = [_HEAD]
    for rule in routes:
        answer = ours if rule.parent else '"DIRECT"'
        for entry in rule.entries:
            lines.append(f"    if ({_condition(entry)}) return {answer};\n")
    for entry in bypass:
        lines.append(f"    if ({_condition(entry)}) return \"DIRECT\";\n")
    lines.append(f"    return {ours};\n}}\n")
    return "".join(lines)


def proxy_authority(host_header: str | None, bound: str, port: int) -> str:
    """host:port clients should use: the Host they reached the proxy by if it is valid, else bound:port."""
    if host_header:
        has_port = host_header.rsplit("]", 1)[-1].count(":") == 1
        try:
            name, number = parse_authority(host_header if has_port else f"{host_header}:{port}")
        except ProxyError:
            pass  # not an authority: nothing from it reaches the script
        else:
            return f"[{name}]:{number}" if ":" in name else f"{name}:{number}"
    return f"[{bound}]:{port}" if ":" in bound else f"{bound}:{port}"


def _condition(entry: BypassEntry) -> str:
    tests = []
    if entry.network is not None:
        tests.append(_network_test(entry))
    elif entry.domain:
        domain = json.dumps(entry.domain)
        dotted = json.dumps("." + entry.domain)
        tests.append(f"(host == {domain} || dnsDomainIs(host, {dotted}))")
    else:
        tests.append("true")
    if entry.port is not None:
        tests.append(f"port == {entry.port}")
    return " && ".join(tests)


def _network_test(entry: BypassEntry) -> str:
    network = entry.network
    assert network is not None
    if isinstance(network, ipaddress.IPv4Network):
        return (f"(ipv4 && isInNet(host, {json.dumps(str(network.network_address))}, "
                f"{json.dumps(str(network.netmask))}))")
    # PAC has no IPv6 helper everywhere: compare a literal host with the one address.
    if network.num_addresses == 1:
        bare = json.dumps(str(network.network_address))
        bracketed = json.dumps(f"[{network.network_address}]")
        return f"(host == {bare} || host == {bracketed})"
    return "false /* IPv6 networks other than single addresses are not expressible in PAC */"
