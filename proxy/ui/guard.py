"""Who may use the traffic page: the Host check against DNS rebinding, the token and its cookie.

Pure decisions on plain values (header strings, the configured host and
port); the app calls them before anything else and answers 403 with the
reason. Nothing here touches a socket.

- **Host** (DNS rebinding): a page on evil.example whose name is made to
  resolve to 127.0.0.1 reaches this server with ``Host: evil.example``; only
  loopback names (``localhost``, 127.0.0.0/8, ``::1``) and the configured UI
  host, with this server's port, are answered.
- **Token**: every request carries it, in ``?token=`` once (the URL printed at
  startup, as Jupyter does) and then in an ``HttpOnly``, ``SameSite=Strict``
  cookie, so other sites cannot use the visitor's session and scripts cannot
  read it. The cookie is named after the port: cookies do not isolate ports,
  and two pages on one host must not overwrite each other's.
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import CookieError, SimpleCookie

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "::1"})


def is_loopback(host: str) -> bool:
    """A loopback name or address (what the page may listen on without being asked)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (name, port); None when it is malformed (RFC 9110 section 7.2)."""
    value = value.strip()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if not name:
        return None
    if not port_text:
        return name.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name.lower(), int(port_text)


def host_refusal(host_header: str | None, ui_host: str, port: int) -> str:
    """Why a request's Host is refused, or "" when it names this page."""
    if not host_header:
        return "a Host header is required"
    parsed = split_host(host_header)
    if parsed is None:
        return "the Host header is malformed"
    name, host_port = parsed
    if (host_port or 80) != port:
        return f"Host {host_header!r} names another port than this page's ({port})"
    if is_loopback(name) or name == ui_host.strip("[]").lower():
        return ""
    return (f"Host {host_header!r} is not a loopback name or the page's --ui-host: "
            "refused (DNS rebinding)")


def cookie_name(port: int) -> str:
    return f"fwdproxy_ui_{port}"


def set_cookie(token: str, port: int) -> str:
    """The Set-Cookie value that carries the token after the first visit."""
    return f"{cookie_name(port)}={token}; Path=/; HttpOnly; SameSite=Strict"


def cookie_token(cookie_header: str | None, port: int) -> str:
    """The token in a Cookie header, "" if there is none."""
    if not cookie_header:
        return ""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return ""
    morsel = jar.get(cookie_name(port))
    return morsel.value if morsel is not None else ""


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed a character at a time."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())
