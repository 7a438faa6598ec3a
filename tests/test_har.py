"""HAR 1.2 from flows: plain values in, the fields HAR viewers require out."""

from __future__ import annotations

import base64
import gzip
import io
import json

import pytest
from har_check import assert_valid_har

from proxy.record.flows import REDACTED, Flow
from proxy.record.har import har_entry, har_log, write_har

REQUIRED_REQUEST = {"method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize", "bodySize"}
REQUIRED_RESPONSE = {"status", "statusText", "httpVersion", "cookies", "headers", "content", "redirectURL",
                     "headersSize", "bodySize"}


def http_flow(**changes: object) -> Flow:
    flow = Flow(kind="http", client="127.0.0.1:5000", method="POST", url="http://api.test/items?page=2&q=",
                status=201, bytes_up=5, bytes_down=9, started=1_700_000_000.25, duration_ms=12.5,
                upstream_reused=False, host="api.test", port=80, path="/items?page=2&q=",
                request_headers=[("Content-Type", "text/plain"), ("Cookie", "a=1; b=2")],
                response_headers=[("Content-Type", "application/json"), ("Set-Cookie", "s=x; Path=/"),
                                  ("Location", "/items/7")],
                request_body=b"hello", response_body=b'{"id": 7}')
    for name, value in changes.items():
        setattr(flow, name, value)
    return flow


def test_log_has_version_creator_and_one_entry_per_flow() -> None:
    document = har_log([http_flow(), http_flow()], comment="a failing test")
    log = document["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "fwdproxy" and log["comment"] == "a failing test"
    assert len(log["entries"]) == 2
    json.dumps(document)  # serialisable as it is


def test_http_entry() -> None:
    entry = har_entry(http_flow())
    assert entry["startedDateTime"] == "2023-11-14T22:13:20.250+00:00"
    assert entry["time"] == 12.5 and entry["cache"] == {}
    assert entry["timings"]["wait"] == 12.5 and entry["timings"]["send"] == 0 and entry["timings"]["receive"] == 0
    request, response = entry["request"], entry["response"]
    assert REQUIRED_REQUEST <= request.keys() and REQUIRED_RESPONSE <= response.keys()
    assert (request["method"], request["url"], request["httpVersion"]) == (
        "POST", "http://api.test/items?page=2&q=", "HTTP/1.1")
    assert request["headers"][0] == {"name": "Content-Type", "value": "text/plain"}
    assert request["queryString"] == [{"name": "page", "value": "2"}, {"name": "q", "value": ""}]
    assert request["cookies"] == [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]
    assert request["postData"] == {"mimeType": "text/plain", "text": "hello"}
    assert (request["headersSize"], request["bodySize"]) == (-1, 5)
    assert (response["status"], response["statusText"]) == (201, "Created")
    assert response["content"] == {"size": 9, "mimeType": "application/json", "text": '{"id": 7}'}
    assert response["cookies"] == [{"name": "s", "value": "x"}]
    assert response["redirectURL"] == "/items/7" and response["bodySize"] == 9
    assert "comment" not in entry


def test_bodies_not_captured_leave_no_text() -> None:
    entry = har_entry(http_flow(request_body=b"", response_body=b""))
    assert "postData" not in entry["request"] and "text" not in entry["response"]["content"]


def test_truncated_and_binary_bodies_say_so() -> None:
    binary = bytes(range(255, -1, -1))
    entry = har_entry(http_flow(response_body=binary[:100], bytes_down=256, request_body=b"he", bytes_up=5))
    content = entry["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == binary[:100]
    assert content["comment"] == "first 100 bytes of 256"
    assert entry["request"]["postData"]["comment"] == "first 2 bytes of 5"


def test_tunnel_entry() -> None:
    flow = Flow(kind="tunnel", client="127.0.0.1:5000", method="CONNECT", url="[::1]:8443", status=200,
                bytes_up=700, bytes_down=1700, host="::1", port=8443,
                request_headers=[("Host", "[::1]:8443")])
    entry = har_entry(flow)
    assert entry["request"]["method"] == "CONNECT" and entry["request"]["url"] == "https://[::1]:8443"
    assert (entry["request"]["bodySize"], entry["response"]["bodySize"]) == (700, 1700)
    assert entry["response"]["statusText"] == "OK" and entry["request"]["queryString"] == []
    assert entry["comment"].startswith("CONNECT tunnel")


def test_failed_exchange_notes_error_and_faults() -> None:
    entry = har_entry(http_flow(status=0, error="connection reset by a fault rule", faults=["reset"]))
    assert entry["response"]["status"] == 0 and entry["response"]["statusText"] == ""
    assert entry["comment"] == "fault rules fired: reset; error: connection reset by a fault rule"


def test_documents_validate_against_the_har_schema() -> None:
    flows = [http_flow(), http_flow(response_body=bytes(range(256)), bytes_down=256),
             Flow(kind="tunnel", client="c", method="CONNECT", url="h:443", status=200, host="h", port=443),
             http_flow(status=0, error="refused", error_kind="destination_unavailable", response_body=b"")]
    assert_valid_har(har_log(flows))
    out = io.StringIO()
    assert write_har(((flow, "") for flow in flows), out, comment="c") == 4
    streamed = json.loads(out.getvalue())
    assert_valid_har(streamed)
    assert streamed["log"]["entries"] == har_log(flows)["log"]["entries"]
    assert streamed["log"]["pages"][0]["startedDateTime"] == streamed["log"]["entries"][0]["startedDateTime"]


def test_schema_check_rejects_a_broken_document() -> None:
    """Negative control: the validator is not a rubber stamp."""
    document = har_log([http_flow()])
    del document["log"]["entries"][0]["timings"]["wait"]
    document["log"]["entries"][0]["startedDateTime"] = "yesterday"
    with pytest.raises(AssertionError, match=r"'wait' is a required property"):
        assert_valid_har(document)


def test_phases_become_har_timings_that_add_up_to_time() -> None:
    flow = http_flow(duration_ms=20.0, connect_ms=3.0, send_ms=1.0, wait_ms=10.0, receive_ms=4.0)
    entry = har_entry(flow)
    assert entry["timings"] == {"blocked": 2.0, "dns": -1, "connect": 3.0, "ssl": -1, "send": 1.0,
                                "wait": 10.0, "receive": 4.0}
    assert entry["time"] == 20.0
    reused = har_entry(http_flow(duration_ms=20.0, connect_ms=0.1, send_ms=1.0, wait_ms=10.0, receive_ms=4.0,
                                 upstream_reused=True))
    assert reused["timings"]["connect"] == -1 and reused["timings"]["blocked"] == 5.0


def test_gzip_bodies_are_decoded_and_broken_ones_kept_as_sent() -> None:
    text = b'{"items": [1, 2, 3]}' * 10
    packed = gzip.compress(text)
    fields = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    content = har_entry(http_flow(response_body=packed, bytes_down=len(packed),
                                  response_headers=fields))["response"]["content"]
    assert content["text"] == text.decode() and content["size"] == len(text)
    assert content["compression"] == len(text) - len(packed)
    broken = b"\x1f\x8b not really gzip \xff"
    content = har_entry(http_flow(response_body=broken, bytes_down=len(broken),
                                  response_headers=fields))["response"]["content"]
    assert base64.b64decode(content["text"]) == broken and content["encoding"] == "base64"
    assert content["size"] == len(broken) and "invalid gzip" in content["comment"]


def test_redacted_cookies_are_not_parsed_as_cookies() -> None:
    entry = har_entry(http_flow(request_headers=[("Cookie", REDACTED)], response_headers=[("Set-Cookie", REDACTED)]))
    assert entry["request"]["cookies"] == [] and entry["response"]["cookies"] == []
    assert entry["request"]["headers"] == [{"name": "Cookie", "value": REDACTED}]
