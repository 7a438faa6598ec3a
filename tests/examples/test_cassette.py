"""A cassette answers a subprocess client (curl) with no origin anywhere: replay never touches the network.

cassettes/weather.har was recorded once (``--fwdproxy-record=once``) against a loopback
origin mapped to weather.test; it is plain HAR 1.2, so browser devtools open it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from proxy.testing.pytest_plugin import FwdProxy


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.fwdproxy_cassette("cassettes/weather.har")
def test_curl_is_answered_from_the_cassette(fwdproxy: FwdProxy) -> None:
    out = subprocess.run(["curl", "-sSf", "http://weather.test/today?city=Oslo"],
                         env={**os.environ, **fwdproxy.env()}, capture_output=True, check=True, timeout=30)
    assert json.loads(out.stdout) == {"city": "Oslo", "sky": "snow", "celsius": -3}
    fwdproxy.flows.assert_called(method="GET", host="weather.test", path="/today", times=1)
