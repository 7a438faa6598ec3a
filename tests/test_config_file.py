"""The TOML config file: every flag as a key, precedence, `config show` and `config check`, bad input."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy import cli, config_file
from proxy.config import parse_networks

ROOT = Path(__file__).resolve().parent.parent
KEYS = config_file.flag_keys(config_file.serve_parser(cli.build_parser()))

# Values that pass a flag's own checks where a generic one of its kind would not.
SAMPLES: dict[str, Any] = {
    # workers: not the default's one per CPU.
    "host": "::1", "port": 3128, "workers": len(os.sched_getaffinity(0)) + 1, "ui-host": "::1",
    "allow-from": ["10.0.0.0/8", "::1"], "metrics-allow-from": "192.0.2.0/24",
    "auth": ["alice:s3cret"], "allow-host": ["*.example.com"], "deny-host": ["10.0.0.0/8"],
    "connect-ports": [443, "9000-9100"], "upgrade-protocols": [],
    "upstream-proxy": "http://user:s3cret@127.0.0.1:3128", "upstream-bypass": ["localhost", "10.0.0.0/8"],
    "upstream-route": [".partner.test=http://127.0.0.1:8081", "10.0.0.0/8=direct"],
    "map-remote": ["https://api.test/v1/*=http://127.0.0.1:3000/"], "map-local": ["http://app.test/*=."],
    "set-header": ["response:*=X-Debug: 1"], "remove-header": ["*=Cookie"], "block": ["*.tracker.test=451"],
}


@pytest.fixture(autouse=True)
def _no_fwdproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FWDPROXY_"):
            monkeypatch.delenv(name)


def sample(key: config_file.Key, tmp_path: Path) -> Any:
    """A value for ``key`` that differs from its default."""
    if key.name in SAMPLES:
        return SAMPLES[key.name]
    if key.name == "auth-file":
        path = tmp_path / "users"
        path.write_text("# users\ncarol:pw\n")
        return str(path)
    if "FILE" in str(key.action.metavar) or key.action.metavar == "DIR":  # --record, --ca-dir, ...
        return str(tmp_path / f"out-{key.name}")
    if key.action.metavar == "PATTERN":  # host rules: --intercept-host, ...
        return ["*.example.com", "10.0.0.0/8"]
    default = key.action.default
    if key.kind == "bool":
        return not default
    if key.action.choices:
        return next(c for c in key.action.choices if c != default)
    if key.kind == "int":
        return (default or 4) + 1
    if key.kind == "float":
        return float(default or 4) + 1.5
    raise AssertionError(f"no sample value for {key.name}: add one to SAMPLES")


def write(tmp_path: Path, text: str, name: str = "fwdproxy.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(*args: str) -> config_file.Loaded:
    return config_file.load(cli.build_parser, list(args), cli.config_from_args)


def setting(loaded: config_file.Loaded, name: str) -> config_file.Setting:
    return next(s for s in loaded.settings if s.key.name == name)


@pytest.mark.parametrize("name", list(KEYS))
def test_every_flag_is_settable_from_the_file(name: str, tmp_path: Path) -> None:
    key = KEYS[name]
    value = sample(key, tmp_path)
    path = write(tmp_path, f"{name} = {config_file.toml_value(value)}\n")
    loaded = load("--config", path)
    got = setting(loaded, name)
    assert got.source == f"file {path}:1"
    assert got.value == config_file.convert(key, value)
    assert loaded.config != load().config  # it reached the running configuration


def test_the_key_table_follows_the_flags() -> None:
    """Keys are derived from the parser: the flags users know are there, --config itself is not."""
    assert {"port", "connect-timeout", "allow-from", "auth", "deny-private", "log-level"} <= set(KEYS)
    assert "config" not in KEYS and "version" not in KEYS and "help" not in KEYS
    assert not set(config_file.TABLES) & set(KEYS), "TOML cannot hold a key and a table of one name"
    for table in config_file.TABLES.values():  # every table folds into keys that exist
        assert set(table.fields.values()) | {table.mapping_into} - {""} <= set(KEYS)


def test_tables_fold_into_their_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[users]\nalice = "s3cret"\nbob = "pa:ss"\n\n'
                           '[hosts]\nallow = ["*.example.com", "127.0.0.1"]\ndeny = ["bad.example.com"]\n')
    config = load("--config", path).config
    assert config.auth == (("alice", "s3cret"), ("bob", "pa:ss"))
    assert config.allow_hosts == ("*.example.com", "127.0.0.1")
    assert config.deny_hosts == ("bad.example.com",)


def test_the_interception_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[interception]\nenabled = true\nhosts = ["*.example.com"]\nskip = ["pinned.example.com"]\n')
    config = load("--config", path).config
    assert (config.intercept, config.intercept_hosts, config.no_intercept_hosts) == (
        True, ("*.example.com",), ("pinned.example.com",))


def test_precedence_flag_then_env_then_file_then_default(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port = 1111\n[users]\nfile = \"pw\"\n")
    assert load().config.port == 8080
    assert load("--config", path).config.port == 1111
    monkeypatch.setenv("FWDPROXY_PORT", "2222")
    monkeypatch.setenv("FWDPROXY_AUTH", "env:pw")
    loaded = load("--config", path)
    assert (loaded.config.port, setting(loaded, "port").source) == (2222, "env FWDPROXY_PORT")
    assert loaded.config.auth == (("env", "pw"),)
    loaded = load("--config", path, "--port", "3333", "--auth", "flag:pw")
    assert (loaded.config.port, setting(loaded, "port").source) == (3333, "flag --port")
    assert ("flag", "pw") in loaded.config.auth and ("file", "pw") not in loaded.config.auth


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWDPROXY_CONFIG", write(tmp_path, "timeout = 7\n"))
    assert load().config.timeout == 7.0


def test_booleans_and_lists_in_both_spellings(tmp_path: Path) -> None:
    config = load("--config", write(tmp_path, 'metrics = false\ndeny-private = true\n'
                                              'allow-from = "10.0.0.0/8, ::1"\nconnect-ports = "443,8443"\n'
                                              'deny-host = "*.internal"\n')).config
    assert (config.metrics, config.deny_private) == (False, True)
    assert config.allow_from == parse_networks("10.0.0.0/8,::1")
    assert config.connect_ports == frozenset({443, 8443})
    assert config.deny_hosts == ("*.internal",)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FWDPROXY_")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**clean, **(env or {})})


def test_config_show_names_each_source_and_redacts_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, 'timeout = 9\nconnect-timeout = 4\n[users]\nalice = "file-secret"\n')
    out = run_cli("config", "show", "--config", path, "--connect-timeout", "2",
                  env={"FWDPROXY_MAX_BODY": "1000", "FWDPROXY_AUTH": "bob:env-secret"})
    assert out.returncode == 0, out.stderr
    lines = {line.split(" =")[0].lstrip("# "): line for line in out.stdout.splitlines()[1:]}
    assert lines["timeout"].endswith(f"# file {path}:1")
    assert lines["connect-timeout"].startswith("connect-timeout = 2.0") and "# flag --connect-timeout" in lines[
        "connect-timeout"]
    assert lines["max-body"].startswith("max-body = 1000") and "# env FWDPROXY_MAX_BODY" in lines["max-body"]
    assert lines["auth"].startswith('auth = ["bob:<redacted>"]')  # the env beats the file's [users]
    assert lines["port"].endswith("# default")
    assert "env-secret" not in out.stdout and "file-secret" not in out.stdout
    shown = run_cli("config", "show", "--config", path)
    assert 'auth = ["alice:<redacted>"]' in shown.stdout and "file-secret" not in shown.stdout
    assert f"# file {path}:3 ([users])" in shown.stdout
    # Credentials and no allow-from: any address may present them, and show says so.
    assert shown.stdout.endswith("# in effect: clients from 0.0.0.0/0, ::/0 with credentials; CONNECT to 443\n")


def test_config_show_output_is_a_config_file(tmp_path: Path) -> None:
    """What `config show` prints (secrets aside) loads back to the same configuration."""
    path = write(tmp_path, 'port = 3128\nallow-from = ["10.0.0.0/8"]\nhost = "0.0.0.0"\n'
                           'deny-host = ["*.internal"]\nlog-format = "json"\n')
    out = run_cli("config", "show", "--config", path)
    again = write(tmp_path, out.stdout, "again.toml")
    assert load("--config", again).config == load("--config", path).config


def test_a_negative_flag_reads_as_its_own_name() -> None:
    """A store_false flag such as --no-pool is the key no-pool: true turns the thing off."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-pool", dest="pool", action="store_false")
    key = config_file.flag_keys(parser)["no-pool"]
    assert (config_file.convert(key, True), config_file.convert(key, False)) == (False, True)


def test_redaction_covers_urls_with_userinfo() -> None:
    key = config_file.Key("upstream", "upstream", "str", argparse.Action(["--upstream"], "upstream"))
    assert config_file.redact(key, "http://u:pw@parent:3128") == "http://u:<redacted>@parent:3128"
    assert config_file.redact(key, "http://parent:3128") == "http://parent:3128"


def test_config_check_accepts_the_example_file() -> None:
    out = run_cli("config", "check", str(ROOT / "fwdproxy.example.toml"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{ROOT / 'fwdproxy.example.toml'}: ok (")


BAD = [
    ("port = \"80\"\n", 1, "port: expected an integer, got a string \"80\""),
    ("timeout = true\n", 1, "timeout: expected a number, got a boolean"),
    ("\n\nconect-timeout = 5\n", 3, "unknown key 'conect-timeout'; did you mean 'connect-timeout'?"),
    ("connect_timeout = 5\n", 1, "did you mean 'connect-timeout'?"),
    ("allow-from = [\"10.0.0.0/99\"]\n", 1, "allow-from: invalid network"),
    ("deny-host = [\"*.ok.example\",\n  \"bad host!\"]\n", 1, "deny-host: invalid host pattern 'bad host!'"),
    ("[hosts]\nallow = [\"10.0.0.0/33\"]\n", 2, "[hosts] allow: invalid network in host rule '10.0.0.0/33'"),
    ("[users]\na = \"x\"\n\n[users]\nb = \"y\"\n", 4, "table [users] given twice (first at line 1)"),
    ("port = 1\nport = 2\n", 2, "key port given twice (first at line 1)"),
    ("port = = 1\n", 1, "not valid TOML (Invalid value): port = = 1"),
    ("auth = [\"a:b\"]\n[users]\nc = \"d\"\n", 2, "[users] sets the same thing as auth (line 1)"),
    ("[users]\nc = 5\n", 2, "[users] 'c': expected a string, got an integer 5"),
    ("log-level = \"loud\"\n", 1, "log-level: expected one of \"debug\""),
    ("deny-private = \"yes\"\n", 1, "deny-private: expected true or false"),
    ("workers = -1\n", 1, "workers: workers must be at least 1"),
    ("users = 3\n", 1, "[users] is a table"),
    ("[hosts]\nallow = []\nrefuse = [\"x\"]\n", 3, "unknown key 'hosts.refuse'; [hosts] takes allow, deny"),
    # A top-level key written under a table is named as one (block is a rewrite rule's key).
    ("[hosts]\nallow = []\nblock = [\"x\"]\n", 3, "unknown key 'hosts.block'; block is a top-level key"),
    ("connect-ports = [443, \"x\"]\n", 1, "connect-ports: invalid port or range 'x'"),
    ("host = \"0.0.0.0\"\n", 1, "host: refusing to listen on 0.0.0.0 as an open proxy"),
    ("auth = [\"no-colon\"]\n", 1, "auth: credentials must be user:password"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_files_name_the_line_and_key(text: str, line: int, message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    assert cli.main(["config", "check", path]) == 2
    err = capsys.readouterr().err
    assert f"fwdproxy: {path}:{line}: " in err and message in err, err


def test_a_bad_file_stops_serve_without_a_traceback(tmp_path: Path) -> None:
    out = run_cli("--port", "0", "--config", write(tmp_path, "max-body = -1\nwhat = 1\n"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert ":2: unknown key 'what'" in out.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe", "not UTF-8 text"),
    (None, "cannot read config file"),
])
def test_unreadable_files(content: bytes | None, message: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.toml"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["config", "check", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_check_judges_the_file_not_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FWDPROXY_PORT", "not-a-port")
    assert cli.main(["config", "check", write(tmp_path, "port = 3128\n")]) == 0
    assert os.environ["FWDPROXY_PORT"] == "not-a-port"  # put back afterwards
    assert capsys.readouterr().out.endswith(": ok (1 settings)\n")


def test_values_from_the_file_reach_a_config_like_flags_do(tmp_path: Path) -> None:
    text = 'host = "127.0.0.1"\nport = 0\nmax-body = 10\nlog-level = "WARNING"\n'
    assert load("--config", write(tmp_path, text)).config == load().config.replace(
        port=0, max_body=10, log_level="warning")


def test_a_top_level_key_under_a_table_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[hosts]\ndeny = ["*.internal"]\nport = 3128\n')
    assert cli.main(["config", "check", path]) == 2
    assert f"{path}:3: unknown key 'hosts.port'; port is a top-level key" in capsys.readouterr().err


def manifest_config() -> str:
    """The fwdproxy.toml block of the ConfigMap in the Kubernetes manifest."""
    lines = (ROOT / "scripts" / "container" / "k8s.yaml").read_text().splitlines()
    start = lines.index("  fwdproxy.toml: |") + 1
    block = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


def test_the_kubernetes_configmap_starts_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's file, with the image's FWDPROXY_HOST=0.0.0.0, is a configuration that starts."""
    monkeypatch.setenv("FWDPROXY_HOST", "0.0.0.0")
    config = load("--config", write(tmp_path, manifest_config())).config
    assert config.host == "0.0.0.0" and config.metrics_allow_from == parse_networks("127.0.0.0/8,::1,10.0.0.0/8")
    assert config.deny_hosts and config.log_format == "json" and config.connect_ports == frozenset({443})
