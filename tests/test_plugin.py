"""The pytest plugin, tested the way pytest plugins are: pytester runs small test files against it.

Each test writes a test file a user could write, runs pytest on it (in
process, or in a subprocess where that is the point: xdist, the entry
point) and asserts on the outcome and the report.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests  # noqa: F401  (see below)

pytest_plugins = ["pytester"]

# The inner test files use requests. Imported here first, it stays in sys.modules;
# otherwise pytester's in-process runs each import it afresh and drop it again, and a
# later run's session mixes two copies of http.cookiejar ("You can only merge into
# CookieJar") whenever this file runs on its own.


# Inner runs load only this plugin, by name: other installed plugins (hypothesis takes
# over a second to set up) would only slow them down, and once the pytest11 entry point
# is installed, loading the module by name as well would register it twice.
PLUGIN = ("-p", "proxy.testing.pytest_plugin", "-p", "no:cacheprovider",
          "-W", "ignore::pytest.PytestAssertRewriteWarning")  # imported here before the inner run


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _collect_inner_garbage() -> Iterator[None]:
    """requests holds a tunnelled socket open until its response is garbage: collect it here, not in a later test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, *args)


def test_fixtures_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--fixtures")
    # pytest sorts the listing by "path:line" as text, so the order says nothing: check each fixture.
    result.stdout.fnmatch_lines(["fwdproxy -- *", "*shared by the session*"])
    for name in ("fwdproxy_factory", "origin_http", "origin_https"):
        result.stdout.fnmatch_lines([f"{name} -- *"])


def test_the_issue_example_passes_offline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def test_client_uses_proxy(fwdproxy, origin_https, monkeypatch):
            fwdproxy.map_host("api.test", origin_https)       # no DNS: api.test is the loopback origin
            monkeypatch.setenv("HTTPS_PROXY", fwdproxy.url)
            resp = requests.get("https://api.test/items", verify=origin_https.ca_file)
            assert resp.text == "GET /items\\n"
            flow = fwdproxy.flows.one(host="api.test")
            assert flow.kind == "tunnel" and flow.target == ("api.test", 443)
    """)
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)


def test_the_server_is_reused_and_flows_reset_between_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import urllib.request
        PORTS = []

        def fetch(proxy, url):
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
            return opener.open(url).read()

        def test_first(fwdproxy, origin_http):
            PORTS.append(fwdproxy.port)
            fetch(fwdproxy, origin_http.url("/one"))
            assert fwdproxy.flows.one().path == "/one"

        def test_second(fwdproxy, origin_http):
            PORTS.append(fwdproxy.port)
            assert PORTS[0] == PORTS[1]
            assert fwdproxy.flows.all() == []
            fetch(fwdproxy, origin_http.url("/two"))
            assert [f.path for f in fwdproxy.flows.wait_for_count(1)] == ["/two"]
    """)
    run(pytester).assert_outcomes(passed=2)


def test_faults_and_host_mappings_end_with_their_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def get(proxy, url):
            return requests.get(url, proxies={"http": proxy.url})

        def test_breaks_things(fwdproxy, origin_http):
            fwdproxy.fail(status=503, path="/broken")
            fwdproxy.map_host("api.test", origin_http)
            assert get(fwdproxy, origin_http.url("/broken")).status_code == 503
            assert get(fwdproxy, "http://api.test/").status_code == 200

        def test_sees_no_fault(fwdproxy, origin_http):
            assert fwdproxy.server.faults.rules() == []
            assert get(fwdproxy, origin_http.url("/broken")).status_code == 200
            assert get(fwdproxy, "http://api.test/").status_code == 502  # no mapping any more
    """)
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=2)


def test_a_failed_query_lists_the_flows_seen(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def test_wrong_host(fwdproxy, origin_http):
            requests.get(origin_http.url("/items?page=2"), proxies={"http": fwdproxy.url})
            fwdproxy.flows.one(host="api.test", timeout=0.2)
    """)
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "E * AssertionError: expected exactly one flow matching host='api.test', found 0 within 0.2s; "
        "fwdproxy http://127.0.0.1:* saw 1 in this test:",
        "E * kind  method  url or target * status  up  down  ms * upstream  notes",
        "E * http  GET     http://127.0.0.1:*/items?page=2  200 * 0 * new",
    ])


def test_a_failing_test_reports_its_flows_and_a_passing_one_does_not(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def test_fails(fwdproxy, origin_http):
            fwdproxy.fail(status=503)
            requests.get(origin_http.url("/failing"), proxies={"http": fwdproxy.url})
            fwdproxy.flows.wait_for(path="/failing")
            assert False, "the client gave up"

        def test_passes(fwdproxy, origin_http):
            requests.get(origin_http.url("/passing"), proxies={"http": fwdproxy.url})

        def test_fails_without_the_proxy():
            assert False
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*- flows through fwdproxy http://127.0.0.1:* -*",
                                 "  http  GET * http://127.0.0.1:*/failing  503 * faults=fail error=*"])
    assert "/passing" not in result.stdout.str()
    assert result.stdout.str().count("flows through") == 1


def test_har_files_for_failing_tests_only(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("""
        import requests

        def test_fails(fwdproxy, fwdproxy_factory, origin_http):
            requests.post(origin_http.url("/a?x=1"), data=b"hello", proxies={"http": fwdproxy.url})
            other = fwdproxy_factory()
            requests.get(origin_http.url("/b"), proxies={"http": other.url})
            fwdproxy.flows.one(), other.flows.one()
            assert False

        def test_passes(fwdproxy, origin_http):
            requests.get(origin_http.url("/c"), proxies={"http": fwdproxy.url})
    """)
    har_dir = tmp_path / "har"
    run(pytester, f"--fwdproxy-har-dir={har_dir}").assert_outcomes(passed=1, failed=1)
    [har] = har_dir.iterdir()
    assert har.name == "test_har_files_for_failing_tests_only.py_test_fails.har"
    log = json.loads(har.read_text())["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "fwdproxy"
    assert [(e["request"]["method"], e["request"]["url"].split("/", 3)[3]) for e in log["entries"]] == [
        ("POST", "a?x=1"), ("GET", "b")]
    assert log["entries"][0]["request"]["postData"]["text"] == "hello"
    assert log["entries"][0]["request"]["queryString"] == [{"name": "x", "value": "1"}]


def test_a_run_that_uses_no_fixture_sees_no_difference(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("""
        import threading

        def test_plain():
            assert not [t for t in threading.enumerate() if t.name.startswith(("fwdproxy", "origin"))]

        def test_fails():
            assert False
    """)
    # In a subprocess: this process has threads of its own.
    result = pytester.runpytest_subprocess(*PLUGIN, f"--fwdproxy-har-dir={tmp_path / 'har'}",
                                           "-o", "fwdproxy_offline=true")
    result.assert_outcomes(passed=1, failed=1)
    assert "fwdproxy" not in result.stdout.str()
    assert not (tmp_path / "har").exists()


def test_env_points_clients_at_the_proxy_despite_a_preset_no_proxy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, urllib.request

        def test_env(fwdproxy):
            url = fwdproxy.url
            assert fwdproxy.env() == {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url,
                                      "https_proxy": url, "NO_PROXY": "", "no_proxy": ""}
            assert (fwdproxy.host, fwdproxy.port) == ("127.0.0.1", int(url.rsplit(":", 1)[1]))

        def test_apply_env(fwdproxy, origin_http, monkeypatch):
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")   # as many machines preset it
            monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
            fwdproxy.apply_env(monkeypatch)
            assert "NO_PROXY" not in os.environ and os.environ["http_proxy"] == fwdproxy.url
            # A new opener: urlopen() keeps the proxies of the first environment it saw.
            assert urllib.request.build_opener().open(origin_http.url("/env")).status == 200
            assert fwdproxy.flows.one().path == "/env"
    """)
    run(pytester).assert_outcomes(passed=2)


def test_factory_proxies_have_their_own_settings_and_stop_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import socket, requests
        PORTS = []

        def test_auth_and_rules(fwdproxy, fwdproxy_factory, origin_http):
            locked = fwdproxy_factory(auth=(("alice", "s3cret"),), deny_hosts=("*.blocked.test",))
            PORTS.append(locked.port)
            assert locked.port != fwdproxy.port
            open_url = {"http": locked.url}
            with_creds = {"http": locked.url.replace("http://", "http://alice:s3cret@")}
            assert requests.get(origin_http.url("/"), proxies=open_url).status_code == 407
            assert requests.get(origin_http.url("/"), proxies=with_creds).status_code == 200
            assert requests.get("http://x.blocked.test/", proxies=with_creds).status_code == 403
            assert [f.status for f in locked.flows.all()] == [407, 200, 403]  # all() lets them finish
            assert fwdproxy.flows.all() == []

        def test_stopped_afterwards():
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", PORTS[0])) != 0
    """)
    run(pytester).assert_outcomes(passed=2)


def test_wait_for_follows_an_asynchronous_client(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import threading, urllib.request

        def test_background(fwdproxy, origin_http):
            go = threading.Event()
            def client():
                go.wait(5)
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": fwdproxy.url}))
                opener.open(origin_http.url("/later")).read()
            worker = threading.Thread(target=client)
            worker.start()
            assert fwdproxy.flows.all() == []
            go.set()
            assert fwdproxy.flows.wait_for(path="/later", timeout=5).status == 200
            worker.join()
    """)
    run(pytester).assert_outcomes(passed=1)


def test_upstream_connections_opened_and_reused_are_counted_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def test_keep_alive(fwdproxy, origin_http):
            with requests.Session() as session:
                for _ in range(3):
                    session.get(origin_http.url("/"), proxies={"http": fwdproxy.url})
            fwdproxy.flows.wait_for_count(3)
            assert (fwdproxy.flows.upstream_opened, fwdproxy.flows.upstream_reused) == (1, 2)
            assert origin_http.connections == 1

        def test_starts_from_nothing(fwdproxy, origin_http):
            requests.get(origin_http.url("/"), proxies={"http": fwdproxy.url})
            fwdproxy.flows.one()
            assert (fwdproxy.flows.upstream_opened, fwdproxy.flows.upstream_reused) == (1, 0)
    """)
    run(pytester).assert_outcomes(passed=2)


def test_offline_refuses_names_neither_mapped_nor_loopback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import requests

        def test_offline(fwdproxy, origin_http):
            resp = requests.get("http://unmapped.test/", proxies={"http": fwdproxy.url})
            assert resp.status_code == 502 and "dns_error" in resp.headers["Proxy-Status"]
            assert "not mapped" in resp.text
            fwdproxy.map_host("unmapped.test:80", origin_http)
            assert requests.get("http://unmapped.test/", proxies={"http": fwdproxy.url}).status_code == 200
            assert origin_http.requests[-1].header("Host") == "unmapped.test"
    """)
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)


def test_origin_https_presents_certificates_only_for_its_names(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import urllib.request
        import pytest, requests

        def test_names(fwdproxy, origin_https):
            proxies = {"https": fwdproxy.url}
            fwdproxy.map_host("other.test", origin_https.address)   # a plain address: no certificate
            with pytest.raises(requests.exceptions.SSLError):
                requests.get("https://other.test/", proxies=proxies, verify=origin_https.ca_file)
            fwdproxy.map_host("api.test", origin_https)
            assert requests.get("https://api.test/", proxies=proxies, verify=origin_https.ca_file).ok
            direct = urllib.request.urlopen(origin_https.url("/"), context=origin_https.ssl_context)
            assert direct.status == 200 and origin_https.url().startswith("https://127.0.0.1:")
    """)
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)


@pytest.mark.slow
def test_xdist_workers_each_get_their_own_proxy(pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(**{f"test_w{i}": f"""
        import os, requests

        def test_worker(fwdproxy, origin_http):
            requests.get(origin_http.url("/{i}"), proxies={{"http": fwdproxy.url}})
            assert [f.path for f in fwdproxy.flows.wait_for_count(1)] == ["/{i}"]
            with open(os.environ["PORTS_FILE"], "a") as out:
                out.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{fwdproxy.port}}\\n")
    """ for i in range(4)})
    ports_file = pytester.path / "ports.txt"
    monkeypatch.setenv("PORTS_FILE", str(ports_file))
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=4)
    workers = dict(line.split() for line in ports_file.read_text().splitlines())
    assert len(workers) == 2 and len(set(workers.values())) == 2


@pytest.mark.slow
def test_the_pytest11_entry_point_loads_the_plugin(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution's entry point, as pyproject.toml declares it, is all it takes."""
    site = pytester.mkdir("site")
    dist = site / "fwdproxy_entry_point-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fwdproxy-entry-point\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nfwdproxy = proxy.testing.pytest_plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile("""
        def test_fixture(fwdproxy):
            assert fwdproxy.url.startswith("http://127.0.0.1:")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
