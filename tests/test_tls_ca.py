"""The local CA, its leaves and the ``fwdproxy ca`` commands, on plain values and real files.

A saved CA must pass its checks before it signs anything: each broken folder
here (a readable key, a corrupt certificate, a key of another certificate, a
leaf posing as a CA) is refused with the file and the fix named.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from subprocs import Running

from proxy.http1.errors import BadRequest
from proxy.http1.target import Origin
from proxy.server.intercept import inner_target
from proxy.tls.ca import BUNDLE_VARIABLES, CAError, LocalCA, system_roots_file
from proxy.tls.leaves import LEAF_LIFETIME, LeafMint, certificate_name
from proxy.tls.stream import looks_like_client_hello

ROOT = Path(__file__).resolve().parent.parent


def fwdproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


# -- the CA folder ------------------------------------------------------------------


def test_create_writes_a_private_key_and_a_certificate_naming_fwdproxy(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path / "certs")
    assert stat.S_IMODE((tmp_path / "certs" / "ca-key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "ca.pem").read_bytes())
    assert "O=fwdproxy" in cert.subject.rfc4514_string() and "fwdproxy local CA for" in cert.subject.rfc4514_string()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650)
    assert ca.cert_file == tmp_path / "certs" / "ca.pem"
    with pytest.raises(CAError, match="already exists"):
        LocalCA.create(tmp_path / "certs")  # never replaces a CA clients may trust


def test_a_saved_ca_loads_and_signs_leaves_its_certificate_verifies(tmp_path: Path) -> None:
    LocalCA.create(tmp_path)
    loaded = LocalCA.load(tmp_path)
    assert loaded.ca.cert_pem.bytes() == (tmp_path / "ca.pem").read_bytes()
    mint = LeafMint(loaded.ca)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    server_side = mint.context("api.example")
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_tls = client.wrap_bio(c_in, c_out, server_hostname="api.example")
    server_tls = server_side.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # drive both handshakes in memory: the leaf verifies against ca.pem
        for tls, out, peer_in in ((client_tls, c_out, s_in), (server_tls, s_out, c_in)):
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
    assert client_tls.version() is not None and client_tls.selected_alpn_protocol() is None


@pytest.mark.parametrize("breakage,message", [
    ("readable-key", r"ca-key.pem can be read by other users \(mode 0644\); fix: chmod 600 .*ca-key.pem"),
    ("corrupt-cert", r"ca.pem is not a valid PEM certificate .*delete .*ca.pem and .*ca-key.pem and run `fwdproxy ca init`"),
    ("corrupt-key", r"ca-key.pem is not an unencrypted PEM private key"),
    ("other-key", r"ca-key.pem is not the key of .*ca.pem"),
    ("missing-key", r"ca-key.pem is missing but .*ca.pem exists"),
    ("not-a-ca", r"ca.pem is not a CA certificate"),
    ("empty-folder", r"no CA in .*: create one with `fwdproxy ca init --dir"),
])
def test_a_broken_ca_folder_is_refused_naming_the_file_and_the_fix(breakage: str, message: str,
                                                                    tmp_path: Path) -> None:
    if breakage != "empty-folder":
        LocalCA.create(tmp_path)
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    if breakage == "readable-key":
        key.chmod(0o644)
    elif breakage == "corrupt-cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    elif breakage == "corrupt-key":
        key.write_text("not a key\n")
    elif breakage == "other-key":
        key.write_bytes(trustme.CA().private_key_pem.bytes())
    elif breakage == "missing-key":
        key.unlink()
    elif breakage == "not-a-ca":
        leaf = trustme.CA().issue_cert("leaf.test")
        cert.write_bytes(leaf.cert_chain_pems[0].bytes())
        key.write_bytes(leaf.private_key_pem.bytes())
    with pytest.raises(CAError, match=message):
        LocalCA.load(tmp_path)


def test_describe_and_the_env_lines(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)
    lines = ca.describe()
    digest = ca.cert.fingerprint(hashes.SHA256()).hex().upper()
    assert lines[0] == f"certificate: {tmp_path / 'ca.pem'}"
    assert lines[2].replace(":", "").split()[-1] == digest and lines[3].startswith("expires:     3000-01-01")
    bundle = ca.write_bundle()
    pems = bundle.read_bytes()
    assert pems.endswith(ca.ca.cert_pem.bytes())
    system = system_roots_file()
    if system:  # the system's roots come first, so the bundle replaces them without losing any
        assert pems.startswith(Path(system).read_bytes()[:200])
    exports = dict(line.removeprefix("export ").split("=", 1) for line in ca.env_lines())
    assert {exports[name] for name in BUNDLE_VARIABLES} == {str(bundle)}
    assert exports["NODE_EXTRA_CA_CERTS"] == str(tmp_path / "ca.pem")


# -- leaves -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mint() -> LeafMint:
    return LeafMint(trustme.CA())


def test_a_leaf_is_short_lived_and_starts_in_the_past(mint: LeafMint) -> None:
    now = datetime.datetime.now(datetime.UTC)
    leaf = mint.mint("api.example", now)
    assert leaf.not_valid_before_utc < now - datetime.timedelta(minutes=30)  # clock skew
    assert leaf.not_valid_after_utc - now <= LEAF_LIFETIME <= datetime.timedelta(days=30)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_an_ip_target_gets_an_ip_san(mint: LeafMint, address: str) -> None:
    san = mint.mint(address).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
    assert san.get_values_for_type(x509.DNSName) == []


def test_leaves_are_cached_per_name_and_share_one_key(mint: LeafMint) -> None:
    before = mint.minted
    first = mint.context("cached.example")
    assert mint.context("cached.example") is first and mint.minted == before + 1
    assert mint.context("other.example") is not first and mint.minted == before + 2
    keys = {mint.mint(name).public_key().public_numbers() for name in ("a.example", "b.example")}  # type: ignore[union-attr]
    assert len(keys) == 1


def test_the_cache_is_bounded() -> None:
    small = LeafMint(trustme.CA(), max_cached=2)
    first = small.context("one.example")
    small.context("two.example")
    small.context("three.example")
    assert small.context("one.example") is not first  # evicted, minted again


@pytest.mark.parametrize("name,expected", [
    ("API.Example.", "api.example"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("a_b.test", "a_b.test"),
    ("bad name", None), ("a" * 64 + ".test", None), (".".join(["a" * 60] * 5), None), ("", None),
    ("x..test", None), ("-x.test", None), ("caf\u00e9.test", None),
])
def test_certificate_name(name: str, expected: str | None) -> None:
    assert certificate_name(name) == expected


@pytest.mark.parametrize("data,expected", [
    (b"\x16\x03\x01\x02\x00\x01", True), (b"\x16\x03\x03", True), (b"\x16\x03", False),
    (b"GET / HTTP/1.1\r\n", False), (b"SSH-2.0-x", False), (b"\x16\x02\x00", False), (b"", False),
])
def test_looks_like_client_hello(data: bytes, expected: bool) -> None:
    assert looks_like_client_hello(data) is expected


def test_requests_inside_a_tunnel_go_to_its_origin_only() -> None:
    origin = Origin("https", "api.test", 443)
    assert inner_target(origin, "/a?b", "GET") == (origin, "/a?b")
    assert inner_target(origin, "*", "OPTIONS") == (origin, "*")
    assert inner_target(origin, "https://api.test/x", "GET") == (origin, "/x")
    for target, method in (("https://evil.test/", "GET"), ("http://api.test/", "GET"), ("api.test:443", "CONNECT")):
        with pytest.raises(BadRequest):
            inner_target(origin, target, method)


# -- the commands ---------------------------------------------------------------------


def test_ca_init_show_env(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    made = fwdproxy("ca", "init", "--dir", str(folder))
    assert made.returncode == 0 and "created" in made.stderr and f"certificate: {folder / 'ca.pem'}" in made.stdout
    shown = fwdproxy("ca", "show", env={"FWDPROXY_CA_DIR": str(folder)})
    assert shown.returncode == 0 and shown.stdout == made.stdout
    env = fwdproxy("ca", "env", "--dir", str(folder))
    assert env.returncode == 0 and (folder / "ca-bundle.pem").exists()
    assert re.findall(r"^export (\w+)=", env.stdout, re.M) == [*BUNDLE_VARIABLES, "NODE_EXTRA_CA_CERTS"]
    again = fwdproxy("ca", "init", "--dir", str(folder))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert fwdproxy("ca", "show", "--dir", str(tmp_path / "none")).returncode == 2


# A python3 without trustme: what a checkout's `python3 -m proxy ca env` meets after ./scripts/serve
# put trustme into .venv for --intercept. None in sys.modules makes each import fail.
WITHOUT_TRUSTME = ("import runpy, sys; sys.modules.update(trustme=None, cryptography=None); "
                   "sys.argv = ['fwdproxy', *sys.argv[1:]]; runpy.run_module('proxy', run_name='__main__')")


def without_trustme(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TRUSTME, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_ca_env_needs_no_trustme_once_the_ca_exists(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    assert fwdproxy("ca", "init", "--dir", str(folder)).returncode == 0
    env = without_trustme("ca", "env", "--dir", str(folder))
    assert env.returncode == 0, env.stderr
    assert env.stdout == fwdproxy("ca", "env", "--dir", str(folder)).stdout
    assert (folder / "ca-bundle.pem").read_bytes().endswith((folder / "ca.pem").read_bytes())
    # What it cannot do without trustme, it refuses with the way out; a bad folder is still refused.
    shown = without_trustme("ca", "show", "--dir", str(folder))
    assert shown.returncode == 2 and "pip install trustme" in shown.stderr and "./scripts/serve" in shown.stderr
    assert "no CA in" in without_trustme("ca", "env", "--dir", str(tmp_path / "none")).stderr
    (folder / "ca.pem").write_text("not a certificate\n")
    broken = without_trustme("ca", "env", "--dir", str(folder))
    assert broken.returncode == 2 and "is not a valid PEM certificate" in broken.stderr


def test_intercept_without_a_ca_creates_one_and_says_how_to_trust_it(tmp_path: Path,
                                                                    running: Callable[..., Running]) -> None:
    proxy = running("--port", "0", "--intercept", "--ca-dir", str(tmp_path), preamble=True)
    proxy.stop()
    lines = proxy.head.splitlines()
    assert f"created a CA for --intercept in {tmp_path / 'ca.pem'}" in lines[0] and "fwdproxy ca env" in lines[0]
    assert "listening on" in lines[-1]
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600
    LocalCA.load(tmp_path)


def test_upstream_insecure_warns_at_every_start(running: Callable[..., Running]) -> None:
    for _ in range(2):
        proxy = running("--port", "0", "--upstream-insecure", preamble=True)
        proxy.stop()
        assert any("--upstream-insecure" in line and "NOT verified" in line for line in proxy.head.splitlines())


def test_a_broken_ca_refuses_to_start(tmp_path: Path) -> None:
    LocalCA.create(tmp_path)
    (tmp_path / "ca-key.pem").chmod(0o640)
    out = fwdproxy("--port", "0", "--intercept", "--ca-dir", str(tmp_path))
    assert out.returncode == 2 and f"chmod 600 {tmp_path / 'ca-key.pem'}" in out.stderr
    assert fwdproxy("--port", "0", "--upstream-ca", str(tmp_path / "nothing.pem")).returncode == 2
