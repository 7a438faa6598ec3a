"""The plugin's second round, run as users run it: pytester writes test files and runs pytest on them.

Retries with counted faults, strict mode and unused rules failing a test at
teardown, chaos seeds printed and replayed, and cassettes recorded against
a loopback origin and replayed with no origin at all (also to curl).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import requests.adapters  # noqa: F401  imported once here: pytester's in-process runs would re-import it
from test_plugin import PLUGIN, run

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


RETRY_TEST = """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    def test_client_retries_until_the_api_recovers(fwdproxy, origin_http):
        rule = fwdproxy.fail(503, path="/api/*", times={times})
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=Retry(total=3, status_forcelist=[503],
                                                                   backoff_factor=0)))
            resp = session.get(origin_http.url("/api/items"), proxies={{"http": fwdproxy.url}}, timeout=10)
        assert resp.status_code == 200 and rule.hits == {times}
"""


@pytest.mark.parametrize(("times", "outcome"), [(2, {"passed": 1}), (5, {"failed": 1})])
def test_a_retry_test_passes_with_two_failures_and_fails_with_five(pytester: pytest.Pytester, times: int,
                                                                   outcome: dict[str, int]) -> None:
    pytester.makepyfile(RETRY_TEST.format(times=times))
    result = run(pytester)
    result.assert_outcomes(**outcome)
    if times == 5:  # three retries, then the client gives up with the fourth 503
        result.stdout.fnmatch_lines(["*RetryError*too many 503 error responses*"])


STRICT_TESTS = """
    import pytest, requests

    def get(proxy, url):
        return requests.get(url, proxies={"http": proxy.url}, timeout=10)

    @pytest.mark.fwdproxy_strict
    def test_unplanned(fwdproxy, origin_http):
        fwdproxy.respond(200, b"ok", path="/planned")
        assert get(fwdproxy, origin_http.url("/planned")).text == "ok"
        assert get(fwdproxy, origin_http.url("/surprise")).status_code == 502

    @pytest.mark.fwdproxy_strict
    def test_unplanned_but_accepted(fwdproxy, origin_http):
        assert get(fwdproxy, origin_http.url("/known")).status_code == 502
        fwdproxy.unplanned.clear()

    def test_not_strict(fwdproxy, origin_http):
        assert get(fwdproxy, origin_http.url("/free")).status_code == 200
"""


def test_strict_mode_fails_a_test_at_teardown_naming_each_unplanned_request(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(STRICT_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_unplanned*",
        "E * AssertionError: 1 request(s) no fwdproxy rule answered were refused with 502 (strict mode or cassette):",
        "E *   GET http://127.0.0.1:*/surprise",
    ])


def test_strict_mode_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(STRICT_TESTS)
    result = run(pytester, "-o", "fwdproxy_strict=true")
    result.assert_outcomes(passed=2, failed=1, errors=1)  # test_not_strict now gets a 502
    result.stdout.fnmatch_lines(["FAILED *test_not_strict*"])


def test_unused_rules_fail_at_teardown_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest, requests

        @pytest.mark.fwdproxy_all_rules_used
        def test_marked(fwdproxy, origin_http):
            fwdproxy.fail(503, path="/retry", times=2)
            requests.get(origin_http.url("/retry"), proxies={"http": fwdproxy.url}, timeout=10)

        def test_unmarked(fwdproxy):
            fwdproxy.fail(503, path="/never")
    """)
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_marked*",
                                 "E *  #1 fail(503) on path='/retry', times=2: fired 1 time"])
    run(pytester, "-o", "fwdproxy_assert_all_rules_used=true").assert_outcomes(passed=2, errors=2)


CHAOS_TEST = """
    import os, requests

    def test_flaky_api(fwdproxy, origin_http):
        fwdproxy.chaos(error_rate=0.3, statuses=[503], reset_rate=0.2, truncate_rate=0.2, path="/api/*")
        seen = []
        for _ in range(40):
            try:
                seen.append(str(requests.get(origin_http.url("/api/items"), proxies={"http": fwdproxy.url},
                                             timeout=10).status_code))
            except requests.ConnectionError:
                seen.append("reset")
            except requests.exceptions.ChunkedEncodingError:  # the body broke off: a truncation
                seen.append("truncated")
        with open(os.environ["CHAOS_OUT"], "a") as out:
            out.write(" ".join(seen) + "\\n")
        assert seen == ["200"] * 40, "the client does not survive chaos"
"""


def test_a_chaos_seed_is_printed_and_replays_the_same_faults(pytester: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = pytester.path / "chaos.txt"
    monkeypatch.setenv("CHAOS_OUT", str(out))
    pytester.makepyfile(CHAOS_TEST)
    first = run(pytester)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*- fwdproxy chaos -*", "chaos seed * replay with --fwdproxy-seed *"])
    seed = int(re.findall(r"replay with --fwdproxy-seed (\d+)", first.stdout.str())[0])
    run(pytester, f"--fwdproxy-seed={seed}").assert_outcomes(failed=1)
    run(pytester, f"--fwdproxy-seed={seed}").assert_outcomes(failed=1)
    run(pytester, f"--fwdproxy-seed={seed + 1}").assert_outcomes(failed=1)
    runs = out.read_text().splitlines()
    assert runs[0] == runs[1] == runs[2] and runs[3] != runs[0]
    # Every kind of fault happens. One random seed's 40 draws miss a kind about once in 3,700 runs
    # (0.8**40 for resets alone); two seeds' 80 draws, about once in 30 million.
    assert {"200", "503", "reset", "truncated"} <= set(runs[0].split()) | set(runs[3].split())


RECORD_TEST = """
    import pytest, requests

    @pytest.mark.fwdproxy_cassette("api.har")
    def test_api(fwdproxy, origin_http):
        def answer(request):
            from proxy.testing.pytest_plugin import OriginReply
            if request.method == "POST":
                return OriginReply(201, request.body, [("Content-Type", "application/json")])
            return OriginReply(200, b'{"items": [1, 2]}', [("Content-Type", "application/json"),
                                                            ("Set-Cookie", "session=abc123")])
        origin_http.handler = answer
        fwdproxy.map_host("api.test", origin_http)
        proxies = {"http": fwdproxy.url}
        resp = requests.get("http://api.test/items", headers={"Authorization": "Bearer s3cret"},
                            proxies=proxies, timeout=10)
        assert resp.json() == {"items": [1, 2]}
        assert requests.post("http://api.test/items", json={"name": "x"}, proxies=proxies,
                             timeout=10).status_code == 201
        assert len(origin_http.requests) == 2
"""

REPLAY_TEST = """
    import pytest, requests

    @pytest.mark.fwdproxy_cassette("api.har")
    def test_api(fwdproxy):
        proxies = {"http": fwdproxy.url}
        resp = requests.get("http://api.test/items", proxies=proxies, timeout=10)
        assert resp.json() == {"items": [1, 2]} and resp.headers["Content-Type"] == "application/json"
        resp = requests.post("http://api.test/items", json={"name": "x"}, proxies=proxies, timeout=10)
        assert resp.status_code == 201 and resp.json() == {"name": "x"}
        assert fwdproxy.flows.assert_called(method="POST", json={"name": "x"})[0].faults == ["replay"]
"""


def test_a_recorded_cassette_replays_with_no_origin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_api=RECORD_TEST)
    run(pytester, "--fwdproxy-record=once", "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)
    text = (pytester.path / "api.har").read_text()
    har = json.loads(text)["log"]
    assert har["version"] == "1.2" and len(har["entries"]) == 2
    assert "s3cret" not in text and "abc123" not in text and '"<redacted>"' in text
    # The same test with no origin at all: offline, api.test is not even mapped.
    pytester.makepyfile(test_api=REPLAY_TEST)
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)
    # Negative control: without the cassette the same test cannot pass offline.
    pytester.makepyfile(test_api=REPLAY_TEST.replace('@pytest.mark.fwdproxy_cassette("api.har")', ""))
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(failed=1)


def test_a_request_missing_from_the_cassette_is_refused_and_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_api=RECORD_TEST)
    run(pytester, "--fwdproxy-record=once").assert_outcomes(passed=1)
    pytester.makepyfile(test_api=REPLAY_TEST.replace('"http://api.test/items", proxies', '"http://api.test/other", proxies'))
    result = run(pytester, "-o", "fwdproxy_offline=true")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*faults=unplanned error='GET http://api.test/other is not in the cassette *api.har "
                                 "(or was played already), so it was not sent on; "
                                 "it holds GET http://api.test/items, POST http://api.test/items'"])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_subprocess_client_is_answered_from_the_cassette(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_api=RECORD_TEST)
    run(pytester, "--fwdproxy-record=once").assert_outcomes(passed=1)
    pytester.makepyfile(test_replayed_to_curl="""
        import os, subprocess, pytest

        @pytest.mark.fwdproxy_cassette("api.har")
        def test_curl(fwdproxy):
            out = subprocess.run(["curl", "-sSf", "http://api.test/items"], env={**os.environ, **fwdproxy.env()},
                                 capture_output=True, check=True, timeout=30)
            assert out.stdout == b'{"items": [1, 2]}'
    """)
    run(pytester, "test_replayed_to_curl.py", "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)


def test_record_modes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_api=RECORD_TEST)
    har = pytester.path / "api.har"
    result = run(pytester)  # none: replay only, and there is nothing to replay
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cassette *api.har does not exist; record it with --fwdproxy-record=once*"])
    run(pytester, "--fwdproxy-record=once").assert_outcomes(passed=1)
    recorded = har.read_text()
    # once, with the cassette there: replayed, so the origin sees nothing and the assertion on it fails.
    run(pytester, "--fwdproxy-record=once").assert_outcomes(failed=1)
    assert har.read_text() == recorded
    run(pytester, "--fwdproxy-record=all").assert_outcomes(passed=1)  # recorded anew
    assert len(json.loads(har.read_text())["log"]["entries"]) == 2
    pytester.makepyfile(test_api=RECORD_TEST.replace("assert len(origin_http.requests) == 2", """
        assert len(origin_http.requests) == 0
        requests.get("http://api.test/new", proxies=proxies, timeout=10)"""))
    run(pytester, "--fwdproxy-record=new").assert_outcomes(passed=1)  # replays two, records the third
    urls = [e["request"]["url"] for e in json.loads(har.read_text())["log"]["entries"]]
    assert urls == ["http://api.test/items", "http://api.test/items", "http://api.test/new"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"log": {"version": "1.2", "entries": [', "*cassette *bad.har is not valid JSON (the file looks cut short)*"),
    ('{"log": {}}', "*cassette *bad.har is not a HAR file: no log.entries list*"),
    ('{"log": {"entries": [{"request": {"url": "http://a.test/"}, "response": {"status": 200}}]}}',
     "*cassette *bad.har entry 1 is malformed: missing or wrong 'method'*"),
    ('{"log": {"entries": [{"request": {"method": "GET", "url": "http://a.test/"}, "response": {"status": 200, '
     '"content": {"text": "abc", "comment": "first 3 bytes of 9"}}}]}}',
     "*cassette *bad.har entry 1 (GET http://a.test/) holds only part of a body: first 3 bytes of 9*"),
])
def test_a_bad_cassette_is_an_error_naming_the_file(pytester: pytest.Pytester, content: str, message: str) -> None:
    (pytester.path / "bad.har").write_text(content)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.fwdproxy_cassette("bad.har")
        def test_replay(fwdproxy):
            pass

        def test_replay_call(fwdproxy):
            fwdproxy.replay("bad.har")
    """)
    result = run(pytester)
    result.assert_outcomes(errors=1, failed=1)
    result.stdout.fnmatch_lines([message, message])


def test_an_unknown_record_mode_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.fwdproxy_cassette("api.har", record="sometimes")
        def test_marker(fwdproxy):
            pass
    """)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown record mode 'sometimes'; one of none, once, new, all*"])
    result = run(pytester, "--fwdproxy-record=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fwdproxy-record: invalid choice: 'sometimes'*"])


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLUGIN, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fwdproxy_strict: *", "@pytest.mark.fwdproxy_all_rules_used: *",
                                 "@pytest.mark.fwdproxy_cassette(name, *"])
