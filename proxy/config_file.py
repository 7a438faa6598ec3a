"""The TOML configuration file, and where each setting of a running proxy came from.

This module owns ``--config FILE``: reading it with ``tomllib``, checking every
key against the serve command's flags (the key table is derived from the
argparse actions, so a new flag is a new key with nothing else to edit), the
tables that flags express badly (``[users]``, ``[hosts]``; later issues add
theirs to ``TABLES``), the line of every key for error messages, and the
precedence flag > ``FWDPROXY_*`` environment > file > default, with the source
of every value for ``fwdproxy config show``.

It knows nothing of sockets and does not build a Config itself: the caller
hands in a function from the merged argparse namespace to a Config (cli.py's),
so the file goes through exactly the checks a flag does. Every error is a
ConfigError whose message names the file, the line, the key and what was
expected; nothing here raises a traceback at a user.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import Config, ConfigError

ENV_PREFIX = "FWDPROXY_"
# Flags that are not settings: they choose the file, or print something and exit.
_NOT_KEYS = {"config", "help", "version"}
_URL_USERINFO = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


@dataclass(frozen=True)
class Key:
    """One setting: a serve flag, seen as a key of the file."""

    name: str  # the flag without dashes: "connect-timeout"
    dest: str  # the argparse destination: "connect_timeout"
    kind: str  # "bool", "int", "float", "str", "list" (repeatable) or "csv" (comma-separated)
    action: argparse.Action = field(repr=False, compare=False)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def secret(self) -> bool:
        """Values holding passwords (the flag's metavar says PASSWORD) are redacted when shown."""
        return "PASSWORD" in str(self.action.metavar or "").upper()

    @property
    def expected(self) -> str:
        metavar = self.action.metavar
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            return "an integer"
        if self.kind == "float":
            return "a number"
        if self.action.choices:
            return "one of " + ", ".join(f'"{c}"' for c in self.action.choices)
        if self.kind == "list":
            return f"an array of strings ({metavar or 'VALUE'} each)"
        if self.kind == "csv":
            return f"a string {metavar} or an array of its items"
        return f"a string ({metavar})" if metavar else "a string"


def flag_keys(serve: argparse.ArgumentParser) -> dict[str, Key]:
    """The file's keys, one per long option of the serve parser, in --help order."""
    keys: dict[str, Key] = {}
    for action in serve._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in _NOT_KEYS or action.dest == argparse.SUPPRESS:
            continue
        name = longs[0][2:]
        keys[name] = Key(name, action.dest, _kind(action), action)
    return keys


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "bool"  # store_true, store_false, BooleanOptionalAction
    if isinstance(action, argparse._AppendAction):
        return "list"
    if action.type is int or action.type is float:
        return action.type.__name__
    metavar = str(action.metavar or "")
    # By convention a comma-separated flag says so in its metavar: LIST or X[,X...].
    return "csv" if "LIST" in metavar or "," in metavar else "str"


# -- tables ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """A ``[name]`` table: either named fields, each another spelling of a flag key, or
    a free mapping of names to strings folded into one flag key (``[users]``)."""

    help: str
    fields: Mapping[str, str] = field(default_factory=dict)  # field -> flag key
    mapping_into: str = ""  # flag key a free mapping folds into
    fold: Callable[[str, str], str] = lambda name, value: f"{name}:{value}"


# Routing (per-host upstreams) adds its table here. A table's name must not be a flag's
# key: TOML cannot have both ``intercept = true`` and ``[intercept]``.
TABLES: dict[str, Table] = {
    "users": Table("proxy credentials, user = \"password\" (like --auth user:password)",
                   mapping_into="auth"),
    "hosts": Table("where clients may go: allow = [...], deny = [...] (like --allow-host/--deny-host)",
                   fields={"allow": "allow-host", "deny": "deny-host"}),
    "interception": Table("TLS interception: enabled = true, hosts = [...], skip = [...] (like "
                          "--intercept, --intercept-host, --no-intercept-host)",
                          fields={"enabled": "intercept", "hosts": "intercept-host",
                                  "skip": "no-intercept-host"}),
}


# -- where each key is ------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+|\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_PATH = rf"(?:{_BARE})(?:\s*\.\s*(?:{_BARE}))*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_PATH})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_PATH})\s*=")


def _split_path(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_BARE, text))


class Lines:
    """Line numbers of tables and keys, read from the text (tomllib does not report them).

    Also finds what tomllib would only report as "Cannot declare ... twice":
    a table or a key given twice, with both lines.
    """

    def __init__(self, text: str) -> None:
        self.where: dict[tuple[str, ...], int] = {}
        self.twice: list[tuple[str, int, int]] = []
        table: tuple[str, ...] = ()
        in_string = ""
        for number, line in enumerate(text.splitlines(), 1):
            if in_string:
                if line.count(in_string) % 2:
                    in_string = ""
                continue
            header = _HEADER.match(line)
            if header:
                table = _split_path(header.group(2))
                if header.group(1) == "[":  # [[arrays]] repeat by design
                    self._note(table, number, "table [" + ".".join(table) + "]")
                continue
            assign = _ASSIGN.match(line)
            if assign:
                path = table + _split_path(assign.group(1))
                self._note(path, number, "key " + ".".join(path))
                rest = line[assign.end():]
                for quotes in ('"""', "'''"):
                    if rest.count(quotes) % 2:
                        in_string = quotes

    def _note(self, path: tuple[str, ...], number: int, what: str) -> None:
        if path in self.where:
            self.twice.append((what, self.where[path], number))
        else:
            self.where[path] = number

    def of(self, *path: str) -> int:
        """The line of a key, or of the nearest enclosing table or key found; 0 if none."""
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return 0


# -- reading the file -----------------------------------------------------------------------

@dataclass
class FileValues:
    """What a file sets: flag destinations to namespace values, and the line of each."""

    path: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    spelled: dict[str, str] = field(default_factory=dict)  # dest -> how the file named it


def read_file(path: str, keys: Mapping[str, Key]) -> FileValues:
    """Read and check a config file; ConfigError lists every problem found, each with its line."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a config file is TOML") from None
    lines = Lines(text)
    if lines.twice:
        raise ConfigError("\n".join(f"{path}:{second}: {what} given twice (first at line {first}); "
                                    "keep one" for what, first, second in lines.twice))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(path, text, exc)) from None
    return _Reader(path, keys, lines).read(data)


def _toml_error(path: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    found = re.search(r"\(at line (\d+), column \d+\)$", message)
    if not found:
        return f"{path}: not valid TOML: {message}"
    number = int(found.group(1))
    source = text.splitlines()[number - 1].strip() if number <= len(text.splitlines()) else ""
    return f"{path}:{number}: not valid TOML ({message[:found.start()].strip()}): {source[:80]}"


class _Reader:
    def __init__(self, path: str, keys: Mapping[str, Key], lines: Lines) -> None:
        self.out = FileValues(path)
        self.keys, self.lines, self.errors = keys, lines, list[str]()

    def read(self, data: dict[str, Any]) -> FileValues:
        for name, value in data.items():
            if name in self.keys:
                self._set(self.keys[name], value, name, (name,))
            elif name in TABLES and isinstance(value, dict):
                self._table(name, TABLES[name], value)
            else:
                self._unknown(name, (name,), [*self.keys, *TABLES])
        if self.errors:
            raise ConfigError("\n".join(self.errors))
        return self.out

    def _error(self, path: tuple[str, ...], message: str) -> None:
        self.errors.append(f"{self.out.path}:{self.lines.of(*path)}: {message}")

    def _unknown(self, name: str, path: tuple[str, ...], known: list[str]) -> None:
        spelled = ".".join(path)
        guess = difflib.get_close_matches(name.replace("_", "-"), known, n=1, cutoff=0.6)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        if name in TABLES:
            hint = f"; [{name}] is a table: {TABLES[name].help}"
        elif len(path) > 1 and name in self.keys:
            hint = (f"; {name} is a top-level key: in TOML, keys after a [table] header belong "
                    "to that table, so put it above the first table")
        elif len(path) > 1 and not guess:
            hint = f"; [{path[0]}] takes {', '.join(known)}"
        self._error(path, f"unknown key {spelled!r}{hint}")

    def _table(self, name: str, table: Table, data: dict[str, Any]) -> None:
        if table.mapping_into:
            key = self.keys[table.mapping_into]
            items = []
            for entry, value in data.items():
                if not isinstance(value, str):
                    self._error((name, entry), f"[{name}] {entry!r}: expected a string, "
                                               f"got {_describe(value)}")
                    continue
                items.append(table.fold(entry, value))
            self._set(key, items, f"[{name}]", (name,))
            return
        for entry, value in data.items():
            if entry in table.fields:
                self._set(self.keys[table.fields[entry]], value, f"[{name}] {entry}", (name, entry))
            else:
                self._unknown(entry, (name, entry), list(table.fields))

    def _set(self, key: Key, value: Any, spelled: str, path: tuple[str, ...]) -> None:
        if key.dest in self.out.values:
            first = self.out.spelled[key.dest]
            self._error(path, f"{spelled} sets the same thing as {first} (line "
                              f"{self.out.lines[key.dest]}); keep one")
            return
        try:
            converted = convert(key, value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            self._error(path, f"{spelled}: expected {key.expected}, got {_describe(value)}"
                              + (f" ({exc})" if str(exc) else ""))
            return
        self.out.values[key.dest] = converted
        self.out.lines[key.dest] = self.lines.of(*path)
        self.out.spelled[key.dest] = spelled


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    shown = json.dumps(value, default=str)
    return f"{kind} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def convert(key: Key, value: Any) -> Any:
    """A TOML value as argparse would have stored the flag (TypeError/ValueError if it cannot be)."""
    action = key.action
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("")
        if action.const is None:  # BooleanOptionalAction: the key is the positive spelling
            return value
        return action.const if value else not action.const  # store_true, or store_false ("no-x")
    if key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("")
        return value
    if key.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("")
        return float(value)
    if key.kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise TypeError("")
        return [_typed(action, item) for item in items]
    if key.kind == "csv" and isinstance(value, list):
        if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value):
            raise TypeError("")
        value = ",".join(str(item) for item in value)
    if not isinstance(value, str):
        raise TypeError("")
    return _typed(action, value)


def _typed(action: argparse.Action, text: str) -> Any:
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise ValueError("")
    return value


# -- layering ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    key: Key
    value: Any  # as in the argparse namespace
    source: str  # "default", "flag --port", "env FWDPROXY_PORT", "file PATH:LINE"


@dataclass
class Loaded:
    config: Config
    settings: list[Setting]
    path: str | None


def serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` subcommand's parser inside the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise LookupError("no serve subcommand")


def load(make_parser: Callable[[], argparse.ArgumentParser], args: list[str],
         build: Callable[[argparse.Namespace], Config]) -> Loaded:
    """Flags (``args`` after ``serve``), then FWDPROXY_* environment, then the file, then defaults.

    ``build`` turns the merged namespace into a Config, raising ValueError for
    values it refuses. Raises ConfigError with a user-facing message.
    """
    parser = make_parser()
    ns = parser.parse_args(["serve", *args])
    keys = flag_keys(serve_parser(parser))
    given = _given_on_command_line(make_parser, args)
    sources = {k.dest: _source(k, given) for k in keys.values()}
    path = getattr(ns, "config", None)
    file = read_file(path, keys) if path else FileValues()
    base = copy.copy(ns)
    for dest, value in file.values.items():
        if sources[dest] == "default":
            setattr(ns, dest, value)
            spelled = file.spelled[dest]
            note = f" ({spelled})" if spelled.startswith("[") else ""
            sources[dest] = f"file {path}:{file.lines[dest]}{note}"
    config = _build_checked(build, base, ns, file, sources, keys)
    settings = [Setting(k, getattr(ns, k.dest), sources[k.dest]) for k in keys.values()]
    return Loaded(config, settings, path)


def _source(key: Key, given: set[str]) -> str:
    if key.dest in given:
        return f"flag --{key.name}"
    if os.environ.get(key.env) is not None:
        return f"env {key.env}"
    return "default"


def _given_on_command_line(make_parser: Callable[[], argparse.ArgumentParser],
                           args: list[str]) -> set[str]:
    """Destinations set by the command line itself: parse again with every default suppressed."""
    serve = serve_parser(make_parser())
    for action in serve._actions:
        action.default = argparse.SUPPRESS
    return set(vars(serve.parse_args(args)))


def _build_checked(build: Callable[[argparse.Namespace], Config], base: argparse.Namespace,
                   merged: argparse.Namespace, file: FileValues, sources: dict[str, str],
                   keys: Mapping[str, Key]) -> Config:
    """Build the Config; if the file's values are refused, say which key (and line) did it."""
    try:
        return build(merged)
    except ValueError as exc:
        failure = str(exc)
    try:
        build(base)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None  # the flags or environment alone are refused
    for dest, value in file.values.items():
        if not sources[dest].startswith("file "):
            continue
        probe = copy.copy(base)
        setattr(probe, dest, value)
        try:
            build(probe)
        except ValueError as exc:
            key = next(k for k in keys.values() if k.dest == dest)
            expected = f" (expected {key.expected})" if key.kind in ("str", "csv", "list") else ""
            where = f"{file.path}:{file.lines[dest]}: {file.spelled[dest]}"
            raise ConfigError(f"{where}: {exc}{expected}") from None
    raise ConfigError(f"{file.path}: these settings together are refused: {failure}")


@contextmanager
def without_environment() -> Iterator[None]:
    """Hide FWDPROXY_* variables (``config check`` judges the file alone)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


# -- showing --------------------------------------------------------------------------------

def redact(key: Key, value: Any) -> Any:
    """Passwords out of a value: ``user:<redacted>`` for credential flags, and URL userinfo."""
    if isinstance(value, list | tuple):
        return [redact(key, item) for item in value]
    if not isinstance(value, str):
        return value
    if key.secret:
        user, colon, _ = value.partition(":")
        return f"{user}:<redacted>" if colon else "<redacted>"
    return _URL_USERINFO.sub(r"\1<redacted>@", value)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is JSON-escaped text


def show(loaded: Loaded) -> str:
    """The effective settings as a config file, each with its source; secrets redacted."""
    out = ["# fwdproxy: effective configuration (flags > FWDPROXY_* environment > "
           f"{loaded.path or 'no config file'} > defaults)"]
    for setting in loaded.settings:
        value = redact(setting.key, setting.value)
        if value is None or value in ([], ""):
            line = f"# {setting.key.name} ="
        else:
            line = f"{setting.key.name} = {toml_value(value)}"
        out.append(f"{line:<44} # {setting.source}")
    return "\n".join([*out, *_in_effect(loaded.config)]) + "\n"


def _in_effect(config: Config) -> list[str]:
    """What the settings add up to where a default depends on others (allow-from, connect-ports)."""
    ports = config.allowed_connect_ports
    reach = ("any port" if ports is None else ", ".join(map(str, sorted(ports))) if len(ports) <= 8
             else f"{len(ports)} ports")
    return [f"# in effect: clients from {', '.join(map(str, config.allow_from))}"
            f"{' with credentials' if config.auth else ''}; CONNECT to {reach}"]
