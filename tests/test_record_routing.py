"""Which rules fired and which parent proxy carried a flow: recorded, shown, exported, on the page.

Real traffic through proxies with rewrite rules (the ``ruled`` fixture of
test_rewrite.py) and through a parent proxy (the ``chain`` fixture of
test_upstream.py), recorded to a real store; each test has a flow where
nothing fired, or that went direct, as its control.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import requests
from har_check import assert_valid_har
from servers import OriginServer
from test_rewrite import Ruled, ruled, via  # noqa: F401
from test_upstream import Chain, chain, get, parent_url  # noqa: F401

from proxy.cli import main
from proxy.record.recording import export_har
from proxy.record.store import Filters, Reader, StoredFlow
from proxy.ui import guard
from proxy.ui.app import UiServer

if False:  # pragma: no cover - typing only
    from conftest import RunningProxy


def stored(proxy: RunningProxy, path: Path, count: int) -> list[StoredFlow]:
    proxy.wait_flows(count)
    recorder = proxy.server.recording.recorder
    assert recorder is not None and recorder.flush()
    with Reader(path) as reader:
        return list(reader.flows())


def show(capsys: pytest.CaptureFixture[str], path: Path, flow_id: int) -> str:
    assert main(["flows", "show", str(path), str(flow_id)]) == 0
    return capsys.readouterr().out


def har_entries(path: Path, out: Path) -> list[dict[str, object]]:
    export_har(path, out, Filters())
    document = json.loads(out.read_text())
    assert_valid_har(document)
    entries: list[dict[str, object]] = document["log"]["entries"]
    return entries


def page_detail(path: Path, flow_id: int) -> dict[str, object]:
    ui = UiServer(path, port=0, live=False).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
        conn.request("GET", f"/api/flows/{flow_id}",
                     headers={"Cookie": f"{guard.cookie_name(ui.port)}={ui.token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        detail: dict[str, object] = json.loads(resp.read())
        conn.close()
        return detail
    finally:
        ui.stop()


def test_the_rewrite_rules_that_fired_are_stored_shown_exported_and_on_the_page(
        ruled: Ruled, origin: OriginServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    path = tmp_path / "flows.sqlite"
    header_rule = f"http://127.0.0.1:{origin.port}/api/*=X-Env: staging"
    block_rule = "*.ads.test"
    proxy = ruled(("set-header", header_rule), ("block", block_rule), record=str(path))
    assert requests.get(origin.url("/api/echo"), proxies=via(proxy), timeout=10).status_code == 200
    assert requests.get(origin.url("/plain"), proxies=via(proxy), timeout=10).status_code == 200  # control
    assert requests.get("http://tracker.ads.test/px", proxies=via(proxy), timeout=10).status_code == 403
    flows = stored(proxy, path, 3)
    assert [s.flow.rules for s in flows] == [[f"set-header {header_rule}"], [], [f"block {block_rule}"]]

    out = show(capsys, path, 1)
    assert f"rule fired: set-header {header_rule}" in out
    assert "rule fired" not in show(capsys, path, 2)
    assert f"rule fired: block {block_rule}" in show(capsys, path, 3)

    entries = har_entries(path, tmp_path / "out.har")
    assert entries[0]["_rules"] == [f"set-header {header_rule}"]
    assert "_rules" not in entries[1] and "_parent" not in entries[1]
    assert entries[2]["_rules"] == [f"block {block_rule}"]
    assert f"rules fired: block {block_rule}" in str(entries[2]["comment"])

    detail = page_detail(path, 1)
    assert detail["rules"] == [f"set-header {header_rule}"] and detail["parent"] == ""
    assert page_detail(path, 2)["rules"] == []


def test_the_parent_proxy_is_stored_shown_exported_and_on_the_page(
        chain: Chain, origin: OriginServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    path = tmp_path / "flows.sqlite"
    back = chain()
    parent = f"127.0.0.1:{back.server.port}"
    # Routes: /via goes through the parent; localhost (the same origin by another name) goes direct.
    front = chain(upstream_proxy=parent_url(back), upstream_bypass=("localhost",), record=str(path))
    assert get(front, origin.url("/echo"))[0] == 200
    assert get(front, f"http://localhost:{origin.port}/echo")[0] == 200  # control: bypassed
    assert len(back.wait_flows(1)) == 1
    flows = stored(front, path, 2)
    assert [s.flow.parent for s in flows] == [parent, ""]

    assert f"via parent proxy {parent}" in show(capsys, path, 1)
    assert "via parent proxy" not in show(capsys, path, 2)

    entries = har_entries(path, tmp_path / "out.har")
    assert entries[0]["_parent"] == parent and "_parent" not in entries[1]

    assert page_detail(path, 1)["parent"] == parent
    assert page_detail(path, 2)["parent"] == ""
