"""The traffic page in a real headless Chromium (Debian's, driven by Playwright).

One browser for the module. It reaches only loopback: its proxy is a fwdproxy
that admits loopback targets only, its resolver maps every name but localhost
(and the one rebinding name below) to NOTFOUND, and background services are
off. Each test uses a fresh browser context (no cookies).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from har_check import assert_valid_har
from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright
from ui_setup import ITEMS, XSS_HEADER, Capture

from proxy.config import Config
from proxy.record.flows import Flow
from proxy.record.store import Recorder
from proxy.server.listener import ProxyServer
from proxy.ui.app import UiServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DIALOGS: list[str] = []  # alert() and friends the page opened during the current test
REBIND = "rebind.test"  # resolves to 127.0.0.1 in this browser only: a DNS rebinding attack's view
pytestmark = pytest.mark.slow  # a browser start costs a few seconds
expect.set_options(timeout=10_000)  # a loaded machine; live rows arrive within a second


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    made = Capture(tmp_path_factory.mktemp("ui-browser"))
    yield made
    made.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: ./scripts/test installs it with apt-get")
    # Anything the browser asks of a non-loopback host goes here and is refused (403).
    guard = ProxyServer(Config(port=0, allow_hosts=("127.0.0.0/8", "::1/128", "localhost")), sinks=[])
    with guard, sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--proxy-server=http://127.0.0.1:{guard.port}", f"--proxy-bypass-list={REBIND}",
            f"--host-resolver-rules=MAP {REBIND} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        ])  # Playwright gives every launch a fresh, temporary user-data-dir
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, capture: Capture) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=capture.page)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    DIALOGS.clear()

    def on_dialog(dialog: Dialog) -> None:
        DIALOGS.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", on_dialog)
    response = opened.goto(capture.ui.url)
    assert response is not None and response.status == 200
    expect(opened.locator("#live")).to_have_text("live")
    yield opened
    context.close()


def rows(page: Page) -> Locator:
    return page.locator("#rows tr")


def test_flows_appear_live_and_the_filters_narrow_them(page: Page, capture: Capture) -> None:
    before = rows(page).count()
    capture.send("GET", "/api/items?page=1")
    capture.send("GET", "/missing")
    capture.send("GET", "/boom")
    expect(rows(page)).to_have_count(before + 3)  # over Server-Sent Events, without a reload
    last = rows(page).last
    expect(last.locator(".c-path")).to_have_text("/boom")
    expect(last.locator(".c-status")).to_have_text("503")
    expect(last).to_have_class("s5")  # coloured by status
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on: the proxy's connect is refused
    try:
        capture.send("GET", "", url=f"http://127.0.0.1:{closed.getsockname()[1]}/gone")
    finally:
        closed.close()
    expect(rows(page).last).to_have_class("err")
    expect(rows(page).last.locator(".c-path")).to_have_text("/gone")
    rows(page).last.click()
    expect(page.locator("#d-body .error-box")).to_contain_text("Proxy-Status")
    page.keyboard.press("Escape")
    page.select_option("#f-status", "4xx")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first.locator(".c-path")).to_have_text("/missing")
    page.select_option("#f-status", "")
    page.fill("#f-q", "page=1")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first.locator(".c-path")).to_have_text("/api/items?page=1")
    capture.send("GET", "/api/items?page=1&again")  # live rows follow the filter too
    capture.send("GET", "/other")
    expect(rows(page)).to_have_count(2)
    page.fill("#f-q", "")
    page.fill("#f-host", "no-such-host")
    expect(rows(page)).to_have_count(0)
    page.fill("#f-host", "127.0.0")  # the control: the same filter with a matching host
    expect(rows(page)).to_have_count(before + 6)


def test_pause_holds_the_list_and_resume_catches_up(page: Page, capture: Capture) -> None:
    page.click("#pause")
    expect(page.locator("#live")).to_have_text("paused")
    count = rows(page).count()
    capture.send("GET", "/while-paused")
    expect(rows(page)).to_have_count(count)
    page.click("#pause")
    expect(rows(page)).to_have_count(count + 1)
    expect(rows(page).last.locator(".c-path")).to_have_text("/while-paused")


def test_detail_pane_pretty_prints_json_with_timings_and_keyboard_moves(page: Page, capture: Capture) -> None:
    capture.send("GET", "/api/items?detail")
    capture.send("GET", "/pixel.png")
    expect(rows(page).last.locator(".c-path")).to_have_text("/pixel.png")
    rows(page).filter(has_text="/api/items?detail").click()
    body = page.locator("#d-body pre.body.json")
    expect(body).to_have_text(json.dumps(ITEMS, indent=2))
    expect(page.locator("#d-body .waterfall .seg.wait")).to_have_count(1)
    expect(page.locator("#d-body .response-headers")).to_contain_text("Content-Type")
    expect(page.locator("#d-curl-text")).to_contain_text("curl ")
    page.keyboard.press("c")  # copy as curl
    expect(page.locator("#status-line")).to_have_text("copied the request as a curl command")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("curl ") and copied.endswith(f"'{capture.origin.url('/api/items?detail')}'")
    page.keyboard.press("j")  # the next row: the image
    expect(page.locator("#d-title")).to_contain_text("/pixel.png")
    image = page.locator("#d-body img.body-image")
    expect(image).to_have_count(1)
    expect(image).to_have_js_property("naturalWidth", 2)  # decoded: the bytes reached the page as an image
    page.keyboard.press("k")
    expect(page.locator("#d-title")).to_contain_text("/api/items")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()


def test_har_download_holds_what_the_filter_shows(page: Page, capture: Capture, tmp_path: Path) -> None:
    capture.send("GET", "/missing")
    page.select_option("#f-status", "4xx")
    expect(rows(page).first.locator(".c-status")).to_have_text("404")
    shown = rows(page).count()
    with page.expect_download() as info:
        page.click("#har")
    path = tmp_path / "flows.har"
    info.value.save_as(path)
    har = json.loads(path.read_text())
    assert_valid_har(har)
    assert len(har["log"]["entries"]) == shown
    assert {e["response"]["status"] for e in har["log"]["entries"]} == {404}


def test_recorded_markup_and_script_are_shown_as_text_and_never_run(page: Page, capture: Capture) -> None:
    capture.send("GET", "/xss")
    rows(page).filter(has_text="/xss").click()
    body = page.locator("#d-body pre.body.text")
    expect(body).to_contain_text('<script>window.__xss = "body"; alert(1)</script>')
    expect(body).to_contain_text('<a href="javascript:window.__xss=\'link\'">click</a>')
    expect(page.locator("#d-body .response-headers")).to_contain_text(XSS_HEADER)
    expect(page.locator("#d-body .response-headers")).to_contain_text("<javascript:")
    assert page.locator("#d-body script, #d-body img, #d-body a").count() == 0  # no element was made
    assert page.evaluate("window.__xss") is None
    assert DIALOGS == []


def test_clear_hides_what_came_before(page: Page, capture: Capture) -> None:
    capture.send("GET", "/before-clear")
    expect(rows(page).last.locator(".c-path")).to_have_text("/before-clear")
    page.click("#clear")
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#count")).to_have_text("0 flows")
    capture.send("GET", "/after-clear")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first.locator(".c-path")).to_have_text("/after-clear")


def test_the_page_without_its_token_is_403(browser: Browser, capture: Capture) -> None:
    context = browser.new_context()
    try:
        response = context.new_page().goto(capture.page + "/")
        assert response is not None and response.status == 403
        assert "needs its token" in response.text()
    finally:
        context.close()


def test_a_rebinding_name_is_refused(browser: Browser, capture: Capture) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"http://{REBIND}:{capture.ui.port}/?token={capture.ui.token}")
        assert response is not None and response.status == 403
        assert "DNS rebinding" in response.text()
        # The control: the same browser and token through a loopback name get the page.
        response = page.goto(f"http://localhost:{capture.ui.port}/?token={capture.ui.token}")
        assert response is not None and response.status == 200
    finally:
        context.close()


def test_a_long_capture_loads_a_page_at_a_time_as_the_list_scrolls_back(browser: Browser, tmp_path: Path) -> None:
    store = tmp_path / "long.sqlite"
    with Recorder(store) as recorder:
        for n in range(1, 451):
            recorder(Flow(kind="http", client="127.0.0.1:1", method="GET", url=f"http://api.test/items/{n}",
                          status=200, host="api.test", port=80, path=f"/items/{n}", started=1_700_000_000 + n))
        assert recorder.flush()
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    try:
        with UiServer(store, port=0, live=False) as ui:
            page = context.new_page()
            page.goto(ui.url)
            expect(page.locator("#count")).to_have_text("450 flows")
            expect(rows(page)).to_have_count(200)  # the newest page only
            expect(rows(page).last.locator(".c-path")).to_have_text("/items/450")
            page.locator("#list").evaluate("list => { list.scrollTop = 0; }")
            expect(rows(page)).to_have_count(400)  # one more page, fetched by id cursor
            page.locator("#list").evaluate("list => { list.scrollTop = 0; }")
            expect(rows(page)).to_have_count(450)
            expect(rows(page).first.locator(".c-path")).to_have_text("/items/1")
    finally:
        context.close()
