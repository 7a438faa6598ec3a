"""Stopgap: the plugin's fixtures for these examples until pyproject.toml declares the pytest11 entry point.

Once fwdproxy is installed with its entry point, pytest loads the plugin by
itself and this file imports nothing, so no fixture is defined twice.
"""

from importlib.metadata import entry_points

if not any(ep.value == "proxy.pytest_plugin" for ep in entry_points(group="pytest11")):
    from proxy.pytest_plugin import (  # noqa: F401
        _fwdproxy_ca,
        _fwdproxy_shared,
        fwdproxy,
        fwdproxy_factory,
        origin_http,
        origin_https,
    )
