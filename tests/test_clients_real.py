"""Real clients through the proxy, each the way its users run it, against loopback origins.

Cheap checks (a second or two each) of what the unit-level tests cannot show: how a
real client's timing and error handling meet the proxy's (curl's upload loop, say).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import RunningProxy
from servers import RawOrigin

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by ./scripts/test")

REFUSED = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", *args],
                          capture_output=True, text=True, timeout=20)


@needs_curl
@pytest.mark.parametrize("expect", ["Expect:", "Expect: 100-continue"])
def test_curl_upload_refused_early_reads_the_refusal(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin],
                                                     tmp_path: Path, expect: str) -> None:
    # An origin refuses a big upload at its head and closes; the proxy closes the client
    # connection after relaying the 413, while curl is still sending. Without a lingering
    # close, curl's next write meets a reset: "Send failure: Broken pipe" and no status,
    # or a second attempt on a new connection.
    origin = raw_origin(REFUSED)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"x" * (32 << 20))
    done = curl("-x", proxy.url, "-T", str(upload), "-H", expect, f"http://{origin.authority}/upload")
    assert (done.returncode, done.stdout) == (0, "413"), done.stderr
    assert len(origin.received) == 1
    assert [flow.status for flow in proxy.wait_flows(1)] == [413]  # one attempt, not a retry after a reset
