"""Upgrade on a plain request (RFC 9110 section 7.8): which protocols may pass, and the switch.

``Upgrade`` is hop-by-hop, so by default a proxy drops it. Some clients send
a WebSocket handshake over ``ws://`` in absolute-form instead of opening a
CONNECT tunnel; for them the proxy forwards the offer when its policy allows
the protocol (squid's ``http_upgrade_request_protocols``), and after a 101
relays both directions as a tunnel. This module owns the decisions on plain
values; the forward step sends what it returns.
"""

from __future__ import annotations

from .headers import Headers

DEFAULT_PROTOCOLS = ("websocket",)


def offered(headers: Headers, allowed: tuple[str, ...]) -> str | None:
    """The Upgrade value to forward: the client's protocols the policy allows, or None.

    Only an offer the client made for this hop counts: ``Connection: upgrade``
    must name the field (RFC 9110 section 7.8), else the field was not meant
    for us to act on.
    """
    if not allowed or "upgrade" not in headers or "upgrade" not in headers.tokens("connection"):
        return None
    protocols = [p.strip() for value in headers.get_all("upgrade") for p in value.split(",") if p.strip()]
    kept = [p for p in protocols if p.split("/", 1)[0].lower() in allowed]
    return ", ".join(kept) or None


def accepted(response: Headers, offer: str) -> str | None:
    """The protocol a 101 switched to, if it is one that was offered (else the switch is refused)."""
    chosen = response.get("upgrade", "") or ""
    names = {p.strip().split("/", 1)[0].lower() for p in offer.split(",")}
    if not chosen or "," in chosen or chosen.strip().split("/", 1)[0].lower() not in names:
        return None
    return chosen.strip()
