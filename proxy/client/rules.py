"""The client's pure decisions: target URLs, routes through proxies, and redirects.

This module owns the rules that decide what the client does, without doing
it: parsing a target URL, choosing the route to it (direct, forwarded by a
proxy, or tunnelled with CONNECT) from the proxy settings and the
HTTP_PROXY / HTTPS_PROXY / NO_PROXY variables, and what a 3xx response turns
the next request into (RFC 9110 section 15.4). No sockets and no DNS: it is
tested with plain values.
"""

from __future__ import annotations

import base64
import email.utils
import enum
import ipaddress
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

from .errors import (
    InvalidURL,
    RedirectError,
)

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 9110 section 9.2.2: methods a client may repeat without changing the outcome.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Fields describing a request's content, dropped with it (the Fetch standard's
# "request-body-header names" plus the framing fields RFC 9112 section 6 owns).
BODY_HEADERS = frozenset({"content-length", "content-type", "content-encoding", "content-language",
                          "content-location", "transfer-encoding", "content-md5", "content-digest",
                          "repr-digest", "digest", "expect"})
# Credentials for one origin must not follow a redirect to another (CVE-2018-18074
# in requests, CVE-2022-27776 in curl); a Host set by the caller names the old origin.
ORIGIN_BOUND_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "host"})
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~"


# -- URLs -----------------------------------------------------------------------


@dataclass(frozen=True)
class URL:
    """An http(s) URL split the way the client uses it; ``target`` is the origin-form path?query."""

    scheme: str
    host: str  # lowercase, IPv6 without brackets
    port: int
    target: str
    fragment: str = ""
    userinfo: str = ""

    @property
    def origin(self) -> tuple[str, str, int]:
        """RFC 6454 origin: what "another site" means for credentials."""
        return self.scheme, self.host, self.port

    @property
    def authority(self) -> str:
        """host[:port] as it belongs in a Host header: port left out when it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def host_port(self) -> str:
        """host:port, always with the port, as a CONNECT target (RFC 9112 section 3.2.3)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def absolute(self) -> str:
        """The absolute-form request target for a proxy (RFC 9112 section 3.2.2): no userinfo or fragment."""
        return f"{self.scheme}://{self.authority}{self.target}"

    def basic_auth(self) -> str | None:
        """Authorization from user:password in the URL (it is never sent in the URL itself)."""
        return _basic(self.userinfo) if self.userinfo else None

    def __str__(self) -> str:
        return self.absolute + (f"#{self.fragment}" if self.fragment else "")


def parse_url(url: str) -> URL:
    """Parse an absolute http:// or https:// URL, refusing what would be sent ambiguously."""
    if _CONTROL.search(url):
        # CVE-2019-9740: CR/LF or spaces in a URL would inject header lines.
        raise InvalidURL(f"URL contains whitespace or control characters: {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"malformed URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"unsupported URL scheme {scheme or '(none)'!r} in {url!r}: use http or https")
    if not parts.hostname:
        raise InvalidURL(f"URL has no host: {url!r}")
    userinfo, _, _ = parts.netloc.rpartition("@")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return URL(scheme, parts.hostname.rstrip(".") or parts.hostname, port or DEFAULT_PORTS[scheme],
               target, parts.fragment, userinfo)


def _basic(userinfo: str) -> str:
    user, _, password = userinfo.partition(":")
    token = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


# -- routes ---------------------------------------------------------------------


class Mode(enum.Enum):
    DIRECT = "direct"
    FORWARD = "forward"  # absolute-form request to the proxy (RFC 9112 section 3.2.2)
    TUNNEL = "tunnel"  # CONNECT, then the request inside (RFC 9110 section 9.3.6)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: http://[user:password@]host:port."""

    host: str
    port: int
    userinfo: str = ""

    @property
    def authorization(self) -> str | None:
        return _basic(self.userinfo) if self.userinfo else None

    def __str__(self) -> str:  # never shows the credentials
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({str(self)!r}{', with credentials' if self.userinfo else ''})"


def parse_proxy(text: str) -> Proxy:
    """Parse a proxy URL as curl does: a missing scheme means http://, a missing port 1080."""
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"malformed proxy URL {text!r}: {exc}") from None
    if parts.scheme.lower() != "http":
        raise InvalidURL(f"unsupported proxy scheme {parts.scheme!r} in {text!r}: "
                         "only http:// proxies are supported")
    if not parts.hostname:
        raise InvalidURL(f"proxy URL has no host: {text!r}")
    userinfo, _, _ = parts.netloc.rpartition("@")
    return Proxy(parts.hostname, port or 1080, userinfo)


@dataclass(frozen=True)
class Route:
    """How one request reaches its target; also the key of the keep-alive pool."""

    mode: Mode
    scheme: str
    host: str
    port: int
    proxy: Proxy | None = None

    def __str__(self) -> str:
        target = URL(self.scheme, self.host, self.port, "/").authority
        via = f" via {self.proxy}" if self.proxy else ""
        return f"{self.mode.value} {self.scheme}://{target}{via}"


def proxies_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Proxy URLs by scheme from ``<scheme>_proxy`` variables, read as urllib reads them.

    Lowercase names win over uppercase ones, and an empty lowercase value
    unsets. Under CGI (REQUEST_METHOD set), HTTP_PROXY is ignored: a client
    controls it through a "Proxy:" request header (CVE-2016-1000110, httpoxy).
    """
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, value in environ.items():
        if name.endswith("_proxy"):  # lowercase spelling: the second pass has the last word
            if value:
                proxies[name[:-6]] = value
            else:
                proxies.pop(name[:-6], None)
    return proxies


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """True if NO_PROXY says ``host:port`` is reached directly, with curl's rules.

    Entries are separated by commas or spaces. ``*`` alone matches every host.
    A name matches itself and its subdomains (``example.com`` and
    ``.example.com`` both match ``www.example.com``, not ``notexample.com``);
    an IP address or CIDR block matches IP literals inside it; ``host:port``
    or ``[v6]:port`` matches that port only. No DNS: a name never matches an
    address.
    """
    host = host.lower().rstrip(".")
    for entry in re.split(r"[,\s]+", no_proxy.strip().lower()):
        if entry == "*":
            return True
        if entry and _entry_matches(entry, host, port):
            return True
    return False


def _entry_matches(entry: str, host: str, port: int) -> bool:
    name, entry_port = _split_entry(entry)
    if entry_port is not None and entry_port != port:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(name, strict=False)
        except ValueError:
            return False
    name = name.lstrip("*").lstrip(".").rstrip(".")
    return bool(name) and (host == name or host.endswith("." + name))


def _split_entry(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        literal, _, tail = entry[1:].partition("]")
        return literal, int(tail[1:]) if tail[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None  # a name, an IPv4 address or block, or a bare IPv6 address or block


@dataclass(frozen=True)
class Router:
    """Chooses each request's route from the proxy settings, the environment and NO_PROXY."""

    proxy: str | None = None  # explicit proxy URL for every scheme; "" means none, whatever the env says
    env_proxies: Mapping[str, str] | None = None  # from proxies_from_env(), when trusting env
    no_proxy: str = ""
    tunnel_http: bool = False

    @classmethod
    def from_settings(cls, proxy: str | None, *, environ: Mapping[str, str] | None,
                      no_proxy: str | None = None, tunnel_http: bool = False) -> Router:
        env = proxies_from_env(environ) if environ is not None else None
        if no_proxy is None:
            no_proxy = (env or {}).get("no", "")
        if proxy:
            parse_proxy(proxy)  # fail at construction, not at the first request
        return cls(proxy, env, no_proxy, tunnel_http)

    def route(self, url: URL) -> Route:
        proxy_url = self._proxy_for(url)
        if proxy_url is None or bypasses_proxy(url.host, url.port, self.no_proxy):
            return Route(Mode.DIRECT, url.scheme, url.host, url.port)
        proxy = parse_proxy(proxy_url)
        # HTTPS always tunnels: the proxy must not see inside TLS. Plain HTTP is
        # forwarded in absolute-form, unless the caller asked to tunnel it too.
        tunnel = url.scheme == "https" or self.tunnel_http
        return Route(Mode.TUNNEL if tunnel else Mode.FORWARD, url.scheme, url.host, url.port, proxy)

    def describe(self) -> str:
        """The proxy setting, without credentials."""
        if self.proxy is not None:
            return str(parse_proxy(self.proxy)) if self.proxy else "none"
        return "from the environment" if self.env_proxies else "none"

    def _proxy_for(self, url: URL) -> str | None:
        if self.proxy is not None:
            return self.proxy or None
        env = self.env_proxies or {}
        return env.get(url.scheme) or env.get("all")


# -- timeouts and retries ------------------------------------------------------


@dataclass(frozen=True)
class Timeout:
    """Seconds to connect (TCP, CONNECT, TLS), to wait for each read, and for a request with its redirects."""

    connect: float = 10.0
    read: float = 10.0
    total: float | None = None

    @classmethod
    def of(cls, value: float | Timeout) -> Timeout:
        return value if isinstance(value, Timeout) else cls(connect=float(value), read=float(value))


@dataclass(frozen=True)
class Retry:
    """Opt-in retries of connection failures and some statuses, with exponential backoff and jitter."""

    total: int = 3
    backoff: float = 0.5
    statuses: frozenset[int] = frozenset({502, 503, 504})
    respect_retry_after: bool = True
    methods: frozenset[str] = IDEMPOTENT  # add "POST" only if the server deduplicates
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if retry_after is not None and self.respect_retry_after:
            wait = parse_retry_after(retry_after)
            if wait is not None:
                return min(wait, self.max_backoff)
        step = min(self.max_backoff, self.backoff * 2.0 ** attempt)
        return step / 2 + random.random() * step / 2  # "equal jitter": spread, never zero


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """RFC 9110 section 10.2.3: delay-seconds or an HTTP-date."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# -- redirects (RFC 9110 section 15.4) ------------------------------------------


def redirect_method(status: int, method: str) -> tuple[str, bool]:
    """The next hop's method, and whether the request content goes with it."""
    if status in (301, 302):
        # RFC 9110 sections 15.4.2 and 15.4.3 allow changing POST to GET, and
        # every browser and curl -L do; other methods are kept.
        return ("GET", False) if method == "POST" else (method, True)
    if status == 303:
        # RFC 9110 section 15.4.4: "a user agent ... performs a retrieval request",
        # GET (or HEAD, which is already a retrieval).
        return (method, False) if method == "HEAD" else ("GET", False)
    # 307 and 308 (RFC 9110 sections 15.4.8 and 15.4.9): MUST NOT change the method.
    return method, True


def resolve_location(current: URL, location: str | None) -> URL | None:
    """The URL a 3xx points to, or None if Location is missing or unusable.

    RFC 9110 section 10.2.2: a relative reference resolves against the
    current target; without a fragment of its own the new URL inherits the
    current one's. Raises RedirectError for a non-HTTP scheme.
    """
    if not location or not location.strip():
        return None
    # Servers send raw UTF-8 or spaces; http.client decoded the bytes as latin-1.
    # Re-encode and percent-encode them as browsers do.
    location = quote(location.strip().encode("latin-1", "replace"), safe=_LOCATION_SAFE)
    try:
        joined = urljoin(str(current), location)
        scheme = urlsplit(joined).scheme.lower()
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS:
        raise RedirectError(f"refusing to follow a redirect to a non-HTTP URL: {joined[:200]}")
    try:
        new = parse_url(joined)
    except InvalidURL:
        return None
    if not new.fragment and current.fragment and "#" not in location:
        new = URL(new.scheme, new.host, new.port, new.target, current.fragment, new.userinfo)
    return new


def check_redirect(current: URL, new: URL, *, allow_downgrade: bool) -> None:
    if current.scheme == "https" and new.scheme == "http" and not allow_downgrade:
        raise RedirectError(f"refusing to follow a redirect from https to http ({new}); "
                            "pass allow_downgrade=True to allow it")


def redirect_headers(headers: Sequence[tuple[str, str]], current: URL, new: URL,
                     keep_body: bool) -> list[tuple[str, str]]:
    """The caller's header fields as they go to the next hop."""
    drop: set[str] = set()
    if not keep_body:
        drop |= BODY_HEADERS
    if new.origin != current.origin:
        drop |= ORIGIN_BOUND_HEADERS
    return [(name, value) for name, value in headers if name.lower() not in drop]
