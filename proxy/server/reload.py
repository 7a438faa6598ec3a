"""SIGHUP: read the configuration again and apply what can change without a restart.

This module owns reloading. A reload builds the whole configuration again the
way startup did (flags > FWDPROXY_* environment > file > defaults), so the file
is checked exactly as at startup; a file that is refused leaves the running
configuration in place and the log says why. Settings in ``LIVE`` are read per
exchange and take effect for new exchanges (connections already established
stay open, and their next request sees the new rules); any other setting that
changed is logged as needing a restart and keeps its running value. The new
configuration reaches the server in one reference swap (``apply_config``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Protocol

from ..config import Config
from ..record.metrics import Metrics

log = logging.getLogger("fwdproxy")

# Config fields read per exchange (or per new connection), so a reload changes them.
LIVE = frozenset({
    "allow_from", "auth", "allow_hosts", "deny_hosts", "connect_ports", "deny_private",
    "timeout", "connect_timeout", "client_idle_timeout", "header_timeout",
    "max_request_line", "max_header_bytes", "max_header_count", "max_body", "max_clients",
    "capture_bodies", "log_level", "metrics_allow_from",
    # Routing and rewrite rules: Live rebuilds the router, the dialler and the rules.
    "upstream_proxy", "upstream_bypass", "upstream_routes", "rewrite_rules",
})


class Reloadable(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def metrics(self) -> Metrics: ...
    def apply_config(self, config: Config) -> None: ...


def changes(old: Config, new: Config) -> list[str]:
    """Names of the fields that differ."""
    return [f.name for f in fields(Config) if getattr(old, f.name) != getattr(new, f.name)]


def _name(field: str) -> str:
    return field.replace("_", "-")


class Reloader:
    """Reloads ``server``'s configuration with ``load`` (which raises ValueError if refused)."""

    def __init__(self, server: Reloadable, load: Callable[[], Config], source: str | None,
                 forward_to: Sequence[int] = (), startup: Config | None = None) -> None:
        self.server, self.load, self.source = server, load, source
        # What the process started with (a worker's server holds the port it bound instead).
        self.startup = startup or server.config
        self.forward_to = forward_to
        self._lock = threading.Lock()

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        for pid in self.forward_to:  # the parent passes it on to every worker process
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        # Not in the signal handler: it interrupts the accept loop, and logging takes locks.
        threading.Thread(target=self.reload, name="fwdproxy-reload", daemon=True).start()

    def reload(self) -> bool:
        """Apply the configuration as it reads now; False (old one kept) if it is refused."""
        with self._lock:
            if self.source is None:
                log.warning("SIGHUP: no --config file to reload; nothing changed")
                return False
            ok = self._reload()
            self.server.metrics.count_reload(ok)
            return ok

    def _reload(self) -> bool:
        running = self.server.config
        try:
            new = self.load()
        except (ValueError, OSError, SystemExit) as exc:
            log.error("config reload from %s refused, keeping the running configuration: %s",
                      self.source, " | ".join(str(exc).splitlines()))
            return False
        for field in changes(self.startup, new):
            if field not in LIVE:
                log.warning("config reload: %s changed in %s from %r to %r; that needs a restart "
                            "(still %r)", _name(field), self.source, getattr(self.startup, field),
                            getattr(new, field), getattr(running, field))
        try:
            new = new.replace(**{f.name: getattr(running, f.name) for f in fields(Config)
                                 if f.name not in LIVE})
        except ValueError as exc:
            log.error("config reload from %s refused, keeping the running configuration: %s",
                      self.source, exc)
            return False
        changed = changes(running, new)
        self.server.apply_config(new)
        if "log_level" in changed:
            logging.getLogger().setLevel(new.log_level.upper())
        worker = self.server.metrics.worker
        log.info("config reloaded from %s: %s%s", self.source,
                 f"changed {', '.join(map(_name, changed))}" if changed else "no live setting changed",
                 f" [worker {worker}]" if worker is not None else "")
        return True
