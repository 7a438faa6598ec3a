"""A subprocess (curl) pointed at the proxy by the environment: fwdproxy.env() sets both cases."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from proxy.testing.pytest_plugin import FwdProxy, Origin

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def test_curl_reads_the_environment(fwdproxy: FwdProxy, origin_http: Origin, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    env = {**os.environ, **fwdproxy.env()}              # curl reads only lowercase http_proxy
    for url in (origin_http.url("/plain"), "https://api.test/secure"):
        subprocess.run(["curl", "-sSf", "--cacert", origin_https.ca_file, "-o", os.devnull, url],
                       env=env, check=True, timeout=30)
    assert fwdproxy.flows.one(kind="http").path == "/plain"
    assert fwdproxy.flows.one(kind="tunnel").target == ("api.test", 443)
