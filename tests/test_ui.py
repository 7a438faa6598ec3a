"""The traffic page over HTTP, without a browser: who gets in, what the API says, the commands.

The page itself, in Chromium, is tested in test_ui_browser.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from har_check import assert_valid_har
from ui_setup import ITEMS, Capture
from waiting import wait_until

from proxy.config import Config
from proxy.record.flows import Flow
from proxy.record.store import Reader, StoredFlow
from proxy.server.rules import Fail, Match
from proxy.ui import guard, views
from proxy.ui.app import UiServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    made = Capture(tmp_path_factory.mktemp("ui"))
    made.send("GET", "/api/items")
    made.send("GET", "/missing")
    made.send("POST", "/echo", body=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    made.send("GET", "/blob")
    made.proxy.faults.add(Fail(Match(path="/refused"), status=503))
    made.send("GET", "/refused")  # answered by the fault rule: never reaches the origin
    made.proxy.faults.clear()
    yield made
    made.close()


def get(capture: Capture, path: str, *, host: str | None = None, cookie: bool = True, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", capture.ui.port, timeout=10)
    try:
        fields = dict(headers or {})
        if host is not None:
            fields["Host"] = host
        if cookie:
            fields["Cookie"] = f"{guard.cookie_name(capture.ui.port)}={capture.ui.token}"
        conn.request(method, path, headers=fields)
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# -- the guard ----------------------------------------------------------------------------------


def test_without_the_token_every_path_is_refused(capture: Capture) -> None:
    for path in ("/", "/static/app.js", "/api/flows", "/api/flows/1", "/api/har", "/api/events"):
        resp, body = get(capture, path, cookie=False)
        assert resp.status == 403, path
        assert b"needs its token" in body
        assert b"widget" not in body and b"<html" not in body
    resp, _ = get(capture, "/", cookie=True)  # the control: the same request with the cookie
    assert resp.status == 200


def test_a_wrong_token_is_refused_in_the_query_and_in_the_cookie(capture: Capture) -> None:
    resp, _ = get(capture, "/?token=" + "x" * len(capture.ui.token), cookie=False)
    assert resp.status == 403
    resp, _ = get(capture, "/", cookie=False,
                  headers={"Cookie": f"{guard.cookie_name(capture.ui.port)}=wrong"})
    assert resp.status == 403


def test_the_token_in_the_url_becomes_an_httponly_strict_cookie(capture: Capture) -> None:
    resp, _ = get(capture, f"/?token={capture.ui.token}", cookie=False)
    assert resp.status == 303
    assert resp.getheader("Location") == "/"  # the token leaves the address bar
    cookie = resp.getheader("Set-Cookie")
    assert cookie == f"{guard.cookie_name(capture.ui.port)}={capture.ui.token}; Path=/; HttpOnly; SameSite=Strict"


def test_a_rebinding_host_is_refused_even_with_the_token(capture: Capture) -> None:
    port = capture.ui.port
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "127.0.0.1", f"localhost:{port + 1}"):
        resp, body = get(capture, "/api/flows", host=host)
        assert resp.status == 403, host
        assert b"widget" not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):  # the controls
        resp, _ = get(capture, "/api/flows", host=host)
        assert resp.status == 200, host


def test_every_answer_has_a_strict_csp_and_no_cors(capture: Capture) -> None:
    for path, cookie in (("/", True), ("/api/flows", True), ("/api/flows/1", True), ("/", False)):
        resp, _ = get(capture, path, cookie=cookie, headers={"Origin": "http://evil.example"})
        csp = resp.getheader("Content-Security-Policy")
        assert csp is not None and "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert not any(name.lower().startswith("access-control-") for name, _ in resp.getheaders())


def test_the_page_has_no_inline_script() -> None:
    html = (ROOT / "proxy" / "ui" / "static" / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    script = (ROOT / "proxy" / "ui" / "static" / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)


def test_clear_from_another_origin_is_refused(capture: Capture) -> None:
    resp, _ = get(capture, "/api/clear", method="POST",
                  headers={"Origin": "http://evil.example", "X-Fwdproxy-UI": "1"})
    assert resp.status == 403
    resp, _ = get(capture, "/api/clear", method="POST")  # a plain form post: no custom header
    assert resp.status == 403
    resp, body = get(capture, "/api/flows")
    assert json.loads(body)["total"] == 5  # nothing was hidden


@pytest.mark.parametrize(("host", "port", "refused"), [
    ("127.0.0.1:8081", 8081, False), ("[::1]:8081", 8081, False), ("localhost:8081", 8081, False),
    ("127.8.9.10:8081", 8081, False), ("ui.lan:8081", 8081, False),  # the configured --ui-host
    ("ui.lan.evil:8081", 8081, True), ("127.0.0.1:8082", 8081, True), ("", 8081, True),
    ("127.0.0.1:80:80", 8081, True), ("[::1", 8081, True), ("localhost", 80, False),
])
def test_host_rules(host: str, port: int, refused: bool) -> None:
    assert bool(guard.host_refusal(host, "ui.lan", port)) is refused


# -- the API --------------------------------------------------------------------------------------


def test_flows_lists_rows_with_columns_and_filters(capture: Capture) -> None:
    resp, body = get(capture, "/api/flows")
    data = json.loads(body)
    assert resp.status == 200 and data["total"] == 5
    first = data["rows"][0]
    assert (first["method"], first["host"], first["path"], first["status"], first["type"]) == \
        ("GET", "127.0.0.1", "/api/items", 200, "application/json")
    _, body = get(capture, "/api/flows?status=4xx")
    assert [r["path"] for r in json.loads(body)["rows"]] == ["/missing"]
    _, body = get(capture, "/api/flows?method=POST")
    assert [r["path"] for r in json.loads(body)["rows"]] == ["/echo"]
    _, body = get(capture, "/api/flows?q=x-www-form")  # free text: a header line
    assert [r["path"] for r in json.loads(body)["rows"]] == ["/echo"]
    _, body = get(capture, "/api/flows?host=nowhere")
    assert json.loads(body)["rows"] == []


def test_pages_by_id_cursor(capture: Capture) -> None:
    _, body = get(capture, "/api/flows?limit=2")
    newest = json.loads(body)["rows"]
    assert [r["path"] for r in newest] == ["/blob", "/refused"]
    _, body = get(capture, f"/api/flows?limit=2&before={newest[0]['id']}")
    assert [r["path"] for r in json.loads(body)["rows"]] == ["/missing", "/echo"]


def test_bad_filters_get_400_with_the_reason(capture: Capture) -> None:
    resp, body = get(capture, "/api/flows?status=banana")
    assert resp.status == 400 and b"status must be" in body
    resp, body = get(capture, "/api/flows?limit=-3")
    assert resp.status == 400 and b"limit" in body


def test_detail_pretty_prints_json_and_shows_binary_as_a_hex_head(capture: Capture) -> None:
    _, body = get(capture, "/api/flows/1")
    flow = json.loads(body)
    assert flow["response"]["body"]["kind"] == "json"
    assert flow["response"]["body"]["text"] == json.dumps(ITEMS, indent=2)
    assert flow["curl"].startswith("curl ") and flow["url"] in flow["curl"]
    assert set(flow["timings"]) == {"connect", "send", "wait", "receive"}
    _, body = get(capture, "/api/flows/4")
    blob = json.loads(body)["response"]["body"]
    assert blob["kind"] == "binary" and blob["size"] == 1024
    assert blob["hex"].startswith("00000000  00 01 02 03")
    resp, _ = get(capture, "/api/flows/999")
    assert resp.status == 404


def test_detail_names_the_faults_that_fired_and_the_error(capture: Capture) -> None:
    _, body = get(capture, "/api/flows/5")
    flow = json.loads(body)
    assert flow["path"] == "/refused" and flow["status"] == 503
    assert len(flow["faults"]) == 1 and flow["faults"][0].startswith("fail")
    _, body = get(capture, "/api/flows/4")
    assert json.loads(body)["faults"] == []  # the control: a flow no rule touched


def test_a_body_that_is_not_an_image_downloads_rather_than_renders(capture: Capture) -> None:
    resp, body = get(capture, "/api/flows/4/body/response")
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert resp.getheader("Content-Disposition", "").startswith("attachment")
    assert body == bytes(range(256)) * 4


def test_har_of_what_the_filter_shows(capture: Capture) -> None:
    resp, body = get(capture, "/api/har?status=2xx")
    assert resp.getheader("Content-Disposition") == 'attachment; filename="fwdproxy.har"'
    har = json.loads(body)
    assert_valid_har(har)
    assert [e["request"]["url"].rpartition("/")[2] for e in har["log"]["entries"]] == ["items", "echo", "blob"]


def test_body_views() -> None:
    text = [("Content-Type", "text/plain")]
    assert views.body_view(b"", 0, text)["kind"] == "empty"
    assert views.body_view(b"", 10, text)["note"].startswith("not recorded")
    assert views.body_view(b"hello", 10, text)["note"] == "first 5 of 10 bytes recorded"
    assert views.body_view(b'{"a": [1]}', 10, text)["text"] == '{\n  "a": [\n    1\n  ]\n}'
    assert views.body_view(b"\x89PNG....", 8, [("Content-Type", "image/png")])["kind"] == "image"
    svg = views.body_view(b"<svg onload=alert(1)/>", 22, [("Content-Type", "image/svg+xml")])
    assert svg["kind"] == "text"  # never rendered as an image: SVG can carry script


# -- the commands -----------------------------------------------------------------------------


def _url_from(proc: subprocess.Popen[str], pattern: str) -> str:
    assert proc.stderr is not None
    for _ in range(5):
        line = proc.stderr.readline()
        if match := re.search(pattern, line):
            return match.group(1)
    raise AssertionError("no traffic page URL printed")


def test_fwdproxy_ui_serves_a_saved_capture(capture: Capture) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "ui", str(capture.store), "--port", "0"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = _url_from(proc, r"traffic page for .* at (http://127\.0\.0\.1:\d+/\?token=\S+)")
        port = int(url.split(":")[2].split("/")[0])
        token = url.rpartition("=")[2]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/flows", headers={"Cookie": f"fwdproxy_ui_{port}={token}"})
        resp = conn.getresponse()
        with Reader(capture.store) as reader:
            assert resp.status == 200 and json.loads(resp.read())["total"] == reader.count() > 0
        conn.request("GET", "/api/flows")  # the control: no cookie
        assert conn.getresponse().status == 403
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_fwdproxy_ui_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    out = subprocess.run([sys.executable, "-m", "proxy", "ui", str(bogus), "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not a fwdproxy flow store" in out.stderr


def test_serve_with_ui_records_to_a_temporary_store_removed_at_exit(capture: Capture, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0", "--ui", "--ui-port", "0"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = _url_from(proc, r"traffic page at (http://127\.0\.0\.1:\d+/\?token=\S+)")
        port = int(url.split(":")[2].split("/")[0])
        proxy_port = int(_url_from(proc, r"listening on http://127\.0\.0\.1:(\d+)"))
        folders = list(tmp_path.glob("fwdproxy-ui-*"))
        assert len(folders) == 1 and (folders[0] / "flows.sqlite").is_file()
        with Reader(folders[0] / "flows.sqlite") as reader:
            assert reader.count() == 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", url.partition(str(port))[2])
        assert conn.getresponse().status == 303
        conn.close()
        # The proxy's own port never serves the page, token or not.
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        conn.request("GET", url.partition(str(port))[2])
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status != 200 and resp.getheader("Set-Cookie") is None and b"fwdproxy traffic" not in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert list(tmp_path.glob("fwdproxy-ui-*")) == []


@pytest.mark.parametrize("when", ["as soon as the scratch store exists", "as soon as the page is announced"])
def test_a_sigterm_while_starting_still_ends_cleanly_and_removes_the_scratch_store(tmp_path: Path, when: str) -> None:
    """Before the proxy's handler is in place, a stop signal is held, not fatal (it used to exit -15,
    leaving the temporary store behind)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0", "--ui", "--ui-port", "0"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        if when.endswith("exists"):  # the widest window: the store, the proxy and the page still to start
            assert wait_until(lambda: list(tmp_path.glob("fwdproxy-ui-*")), 30, interval=0.001)
        else:
            _url_from(proc, r"traffic page at (http://127\.0\.0\.1:\d+/\?token=\S+)")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert list(tmp_path.glob("fwdproxy-ui-*")) == []


def test_ui_needs_one_worker_and_a_valid_port() -> None:
    with pytest.raises(ValueError, match="--ui needs --workers 1"):
        Config(ui=True, workers=2)
    with pytest.raises(ValueError, match="ui_port must be"):
        Config(ui_port=70000)
    assert Config(ui=True).ui_port == 8081  # the control: the defaults are valid


def test_detail_carries_tls_facts_and_trailers() -> None:
    flow = Flow(kind="http", client="127.0.0.1:1", method="GET", url="https://api.test/x", status=200,
                bytes_down=2, response_body=b"ok", intercepted=True, upstream_tls="verified",
                response_trailers=[("Server-Timing", "db;dur=3")])
    shown = views.flow_json(StoredFlow(7, flow, False))
    assert (shown["intercepted"], shown["upstream_tls"]) == (True, "verified")
    assert shown["response"]["trailers"] == [["Server-Timing", "db;dur=3"]]
    assert shown["request"]["trailers"] == []


def test_the_page_never_runs_without_a_token(capture: Capture) -> None:
    with pytest.raises(ValueError, match="needs a token"):
        UiServer(capture.store, port=0, token="")
    page = UiServer(capture.store, port=0)  # the control: a random token of 32 characters
    try:
        assert len(page.token) == 32 and page.url.endswith(f"?token={page.token}")
        assert page.exposure_warning == ""  # loopback: nothing to warn about
    finally:
        page.server_close()
        page.reader.close()
