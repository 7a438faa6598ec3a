"""Rewrite rules: map-remote, map-local, set-header, remove-header and block, parsed and matched.

Pure: a rule is parsed from two strings (its kind and its text, as a flag or
a config file gives them), and a request's URL parts are matched against the
rules to give a Plan of what to do. Carrying the plan out (sending a file,
refusing, forwarding elsewhere) is ``rules.py``'s job. A rule that does not
parse is a RuleError naming the rule, for a clear message at start.

A URL glob is ``[SCHEME://]HOST[:PORT][/PATH]``: the scheme ``http``,
``https`` or ``*`` (any, also when left out); the host a glob (``*.test``);
no port means any port; the path is matched as the pytest plugin's fault
matchers match it (a glob on the path without its query, or the exact path),
and no path means any path. A ``=`` inside a glob is written ``[=]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..http1.errors import ProxyError
from ..http1.headers import HOP_BY_HOP
from ..http1.target import DEFAULT_PORTS, Origin, parse_authority
from .urlglob import UrlGlob, parse_glob

KINDS = ("map-remote", "map-local", "set-header", "remove-header", "block")
SIDES = ("request", "response")
# Framing is the proxy's to decide; hop-by-hop fields never cross it anyway.
_UNSETTABLE = HOP_BY_HOP | {"content-length"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

HeaderEdit = tuple[str, str | None]  # (name, value); None removes the field


class RuleError(ConfigError):
    """A rule that cannot be used; the message names the rule."""


@dataclass(frozen=True)
class Rule:
    """One rule of any kind; the fields that kind does not use stay at their defaults."""

    kind: str
    text: str
    glob: UrlGlob
    origin: Origin | None = None  # map-remote: where to
    path: str = ""  # map-remote: the new path prefix ("" keeps the path)
    keep_host: bool = False  # map-remote: Host stays the client's
    local: Path | None = None  # map-local: a file, or a folder to serve from
    side: str = "request"  # set-header / remove-header
    name: str = ""
    value: str | None = None
    status: int = 403  # block

    def __str__(self) -> str:
        return f"{self.kind} {self.text}"


@dataclass
class Plan:
    """What the rules say to do with one request; ``fired`` names each rule that matched."""

    answer: Rule | None = None  # a block or map-local rule answers the request itself
    remote: Rule | None = None
    request_edits: list[HeaderEdit] = field(default_factory=list)
    response_edits: list[HeaderEdit] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)


def parse_rule(kind: str, text: str) -> Rule:
    """One rule from its kind (``map-remote``...) and its text; RuleError naming it if it is unusable."""
    if kind not in KINDS:
        raise RuleError(f"unknown rule kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        return dataclasses.replace(_PARSERS[kind](kind, text), text=text)
    except (RuleError, ValueError) as exc:
        raise RuleError(f"rule --{kind} {text!r}: {exc}") from None


def _options(text: str, allowed: Iterable[str]) -> tuple[set[str], str]:
    """Leading ``word:`` options (``response:``, ``keep-host:``) and the rest."""
    found: set[str] = set()
    while True:
        word, colon, rest = text.partition(":")
        if not colon or word not in allowed or rest.startswith("//"):
            return found, text
        found.add(word)
        text = rest


def _split(text: str, *, required: bool = True) -> tuple[str, str | None]:
    """Split at the first ``=`` outside brackets (so ``[=]`` matches a literal one)."""
    depth = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "=" and depth == 0:
            return text[:i], text[i + 1:]
    if required:
        raise ValueError("expected URL_GLOB=...")
    return text, None


def _map_remote(kind: str, text: str) -> Rule:
    options, text = _options(text, ("keep-host",))
    pattern, url = _split(text)
    assert url is not None
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"target {url!r} must be an http:// or https:// URL")
    authority, slash, path = rest.partition("/")
    origin = _origin(scheme.lower(), authority)
    if "?" in path or "#" in path:
        raise ValueError(f"target {url!r} may have a path prefix but no query or fragment")
    return Rule(kind, text, parse_glob(pattern), origin=origin, path=slash + path,
                keep_host="keep-host" in options)


def _origin(scheme: str, authority: str) -> Origin:
    """The target's origin, by the strict host and port rules CONNECT targets follow."""
    if "@" in authority or not authority:
        raise ValueError(f"target host {authority!r} is not host[:port]")
    if authority.endswith("]") or ":" not in authority.rsplit("]", 1)[-1]:
        authority = f"{authority}:{DEFAULT_PORTS[scheme]}"
    try:
        host, port = parse_authority(authority)
    except ProxyError as exc:
        raise ValueError(exc.reason) from None
    return Origin(scheme, host, port)


def _map_local(kind: str, text: str) -> Rule:
    pattern, location = _split(text)
    assert location is not None
    path = Path(location).expanduser()
    if ".." in path.parts:
        raise ValueError(f"local path {location!r} must not contain '..'")
    if not path.exists():
        raise ValueError(f"local path {location!r} does not exist")
    return Rule(kind, text, parse_glob(pattern), local=path.resolve())


def _set_header(kind: str, text: str) -> Rule:
    options, text = _options(text, SIDES)
    pattern, field_text = _split(text)
    assert field_text is not None
    name, colon, value = field_text.partition(":")
    if not colon:
        raise ValueError("expected URL_GLOB=Name: value")
    return Rule(kind, text, parse_glob(pattern), side=_side(options),
                name=_field_name(name.strip()), value=_field_value(value.strip()))


def _remove_header(kind: str, text: str) -> Rule:
    options, text = _options(text, SIDES)
    pattern, name = _split(text)
    assert name is not None
    if name.strip().lower() == "host":
        raise ValueError("Host cannot be removed (HTTP/1.1 requires it); set it instead")
    return Rule(kind, text, parse_glob(pattern), side=_side(options), name=_field_name(name.strip()))


def _block(kind: str, text: str) -> Rule:
    pattern, status_text = _split(text, required=False)
    status = 403
    if status_text is not None:
        if not status_text.strip().isdigit() or not 400 <= int(status_text) <= 599:
            raise ValueError(f"status {status_text!r} must be 400..599")
        status = int(status_text)
    return Rule(kind, text, parse_glob(pattern), status=status)


def _side(options: set[str]) -> str:
    if len(options) > 1:
        raise ValueError("say request: or response:, not both")
    return options.pop() if options else "request"


def _field_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in _UNSETTABLE:
        raise ValueError(f"{name} is framing or hop-by-hop; the proxy sets it")
    return name


def _field_value(value: str) -> str:
    if _BAD_VALUE.search(value):
        raise ValueError("header value has control characters")
    return value


_PARSERS = {"map-remote": _map_remote, "map-local": _map_local, "set-header": _set_header,
            "remove-header": _remove_header, "block": _block}


def parse_rules(specs: Iterable[tuple[str, str]]) -> tuple[Rule, ...]:
    """Rules from (kind, text) pairs, in the order given."""
    return tuple(parse_rule(kind, text) for kind, text in specs)


def plan(rules: Iterable[Rule], scheme: str, host: str, port: int, path: str) -> Plan:
    """What to do with a request for scheme://host:port/path, rule by rule in order.

    The first block or map-local rule that matches answers the request; the
    first map-remote rule that matches picks the new target; every header
    rule that matches applies, in order.
    """
    result = Plan()
    for rule in rules:
        if not rule.glob.matches(scheme, host, port, path):
            continue
        if rule.kind in ("block", "map-local"):
            if result.answer is None:
                result.answer = rule
                result.fired.append(str(rule))
            continue
        if rule.kind == "map-remote":
            if result.remote is None:
                result.remote = rule
                result.fired.append(str(rule))
            continue
        edits = result.request_edits if rule.side == "request" else result.response_edits
        edits.append((rule.name, rule.value))
        result.fired.append(str(rule))
    if result.answer is not None:  # nothing goes upstream: only the answering rule fired
        result.fired = [str(result.answer)]
    return result


def tunnel_block(rules: Iterable[Rule], host: str, port: int) -> Rule | None:
    """The block rule refusing a CONNECT to host:port: one whose glob names no path.

    A blind tunnel shows only its target, so a rule about paths cannot apply to it.
    """
    for rule in rules:
        if rule.kind == "block" and rule.glob.match.path is None and rule.glob.scheme != "http" \
                and rule.glob.matches("https", host, port, "/"):
            return rule
    return None


def remote_path(rule: Rule, path: str) -> str:
    """The request's path after a map-remote rule: the glob's literal prefix replaced by the target's."""
    if not rule.path:
        return path
    rest = path[len(rule.glob.path_prefix):] if path.startswith(rule.glob.path_prefix) else path
    if not rest:
        return rule.path
    if rest.startswith("?"):
        return rule.path + rest
    return rule.path.rstrip("/") + "/" + rest.lstrip("/")


def edit_fields(fields: list[tuple[str, str]], edits: Iterable[HeaderEdit]) -> list[tuple[str, str]]:
    """Apply set (replace every field of that name) and remove edits, in order."""
    for name, value in edits:
        key = name.lower()
        fields = [(n, v) for n, v in fields if n.lower() != key]
        if value is not None:
            fields.append((name, value))
    return fields
