"""Cassettes as files: written from flows with the HAR writer, read back as answers, refused when broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.record.flows import REDACTED, Flow
from proxy.testing import cassette
from proxy.testing.cassette import CassetteError


def forwarded(**fields: object) -> Flow:
    flow = Flow(kind="http", client="127.0.0.1:1", method="POST", url="http://api.test/upload",
                status=200, host="api.test", port=80, path="/upload", upstream_reused=False)
    for name, value in fields.items():
        setattr(flow, name, value)
    return flow


def test_binary_bodies_and_secrets_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.har"
    flow = forwarded(request_body=b"\x00\x01\xfe", bytes_up=3, response_body=b"\x89PNG\xff", bytes_down=5,
                     request_headers=[("Authorization", "Bearer s3cret"), ("X-Api-Key", "k3y")],
                     response_headers=[("Content-Type", "image/png"), ("Content-Length", "5"),
                                       ("Set-Cookie", "sid=abc")])
    tunnel = Flow(kind="tunnel", client="127.0.0.1:1", method="CONNECT", url="api.test:443")
    answered = forwarded(upstream_reused=None, faults=["respond"])
    assert cassette.write(path, [flow, tunnel, answered], capture=65536) == 1  # only what reached an origin
    text = path.read_text()
    assert "s3cret" not in text and "k3y" not in text and "sid=abc" not in text
    [entry] = cassette.load(path)
    assert (entry.method, entry.url, entry.status, entry.body) == ("POST", "http://api.test/upload", 200,
                                                                   b"\x89PNG\xff")
    assert ("Content-Length", "5") not in entry.headers  # the proxy frames a replayed answer itself
    assert ("Set-Cookie", REDACTED) in entry.headers


def test_a_body_larger_than_the_capture_is_not_recorded(tmp_path: Path) -> None:
    flow = forwarded(response_body=b"x" * 10, bytes_down=20)
    with pytest.raises(CassetteError, match=r"cannot record POST http://api.test/upload into .*c.har: its body "
                                            r"is larger than the 10 bytes"):
        cassette.write(tmp_path / "c.har", [flow], capture=10)


def har(tmp_path: Path, response: dict[str, object], post: dict[str, object] | None = None) -> Path:
    request: dict[str, object] = {"method": "POST", "url": "http://a.test/"}
    if post is not None:
        request["postData"] = post
    path = tmp_path / "c.har"
    path.write_text(json.dumps({"log": {"entries": [{"request": request, "response": response}]}}))
    return path


def test_base64_request_bodies_and_decoded_responses(tmp_path: Path) -> None:
    path = har(tmp_path, {"status": 200, "headers": [{"name": "Content-Encoding", "value": "gzip"}],
                          "content": {"text": "hello", "size": 5, "compression": -20}},
               {"text": "AAH+", "encoding": "base64"})
    [entry] = cassette.load(path)
    assert entry.request_body == b"\x00\x01\xfe"
    assert entry.body == b"hello" and entry.headers == []  # decoded: Content-Encoding no longer applies


@pytest.mark.parametrize(("response", "message"), [
    ({"status": 200, "content": {"text": "!!", "encoding": "base64"}}, "a body is not valid base64"),
    ({"status": "OK"}, "is malformed: missing or wrong invalid literal"),
    ({"status": 200, "content": {"text": "ab", "comment": "body: first 2 bytes of 9"}},
     r"holds only part of a body: first 2 bytes of 9"),
])
def test_broken_entries_are_named(tmp_path: Path, response: dict[str, object], message: str) -> None:
    with pytest.raises(CassetteError, match=rf"cassette .*c.har entry 1.*{message}"):
        cassette.load(har(tmp_path, response))


def test_modes(tmp_path: Path) -> None:
    missing, present = tmp_path / "missing.har", tmp_path / "present.har"
    present.write_text("{}")
    assert [cassette.plan(present, mode) for mode in cassette.MODES] == [
        (True, False), (True, False), (True, True), (False, True)]
    assert [cassette.plan(missing, mode) for mode in cassette.MODES[1:]] == [
        (False, True), (False, True), (False, True)]
    with pytest.raises(CassetteError, match="does not exist; record it with --fwdproxy-record=once"):
        cassette.plan(missing, "none")
    with pytest.raises(CassetteError, match="unknown record mode 'replay'; one of none, once, new, all"):
        cassette.plan(present, "replay")


def test_a_gzip_response_is_replayed_decoded(tmp_path: Path) -> None:
    import gzip

    packed = gzip.compress(b'{"ok": true}')
    flow = forwarded(response_body=packed, bytes_down=len(packed),
                     response_headers=[("Content-Encoding", "gzip"), ("Content-Type", "application/json")])
    cassette.write(tmp_path / "c.har", [flow], capture=65536)
    [entry] = cassette.load(tmp_path / "c.har")
    # HAR keeps the decoded text, so the answer goes out decoded and says nothing of gzip.
    assert entry.body == b'{"ok": true}' and entry.headers == [("Content-Type", "application/json")]
