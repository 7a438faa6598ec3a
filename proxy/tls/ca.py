"""The local CA for interception: its folder, creating it, loading it, describing it.

This module owns the CA folder (``ca.pem``, and ``ca-key.pem`` with mode 0600)
and the checks a saved CA must pass before it signs anything: a corrupt
certificate, a key others can read, a key that does not belong to the
certificate, or an expired certificate each refuse to start with the file
and the fix. The CA is made and loaded with trustme (``CA.from_pem`` for a
saved one); openssl is never run.
"""

from __future__ import annotations

import datetime
import getpass
import os
import shlex
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes as PrivateKey

CERT_NAME = "ca.pem"
KEY_NAME = "ca-key.pem"
BUNDLE_NAME = "ca-bundle.pem"
# Variables that point common clients at a CA bundle (Python ssl, requests, curl, git, pip).
BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT")
# Node adds these to its own roots instead of replacing them, so it gets the CA alone.
EXTRA_CA_VARIABLES = ("NODE_EXTRA_CA_CERTS",)


class CAError(ValueError):
    """A CA that cannot be used; the message names the file and the fix."""


def default_ca_dir() -> Path:
    """``certs/`` when run from a source checkout, else a per-user data folder."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists() and (root / "certs").is_dir():
        return root / "certs"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "fwdproxy"


def _trustme() -> None:
    """trustme (and cryptography) are needed only for interception: say so when they are missing."""
    try:
        import trustme  # noqa: F401
    except ImportError as exc:
        raise CAError("TLS interception needs trustme: pip install trustme "
                      "(./scripts/serve installs it into .venv in a checkout)") from exc


def env_lines(directory: Path) -> list[str]:
    """What ``fwdproxy ca env`` prints for the CA saved in directory, after writing its bundle.

    Trusting a CA is only reading files, so a python3 without trustme (a checkout run as
    ``python3 -m proxy ca env`` after ``./scripts/serve --intercept`` made the CA in .venv)
    still gets the lines; it checks what the standard library can, and --intercept checks the rest.
    """
    try:
        _trustme()
    except CAError:
        cert_file = _saved_files(directory)[0]
        try:
            ssl.PEM_cert_to_DER_cert(cert_file.read_text("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise CAError(f"{cert_file} is not a valid PEM certificate: restore it, or delete it and "
                          f"{directory / KEY_NAME} and run `fwdproxy ca init`") from None
        _write_bundle(directory / BUNDLE_NAME, cert_file.read_bytes())
        return _exports(directory / BUNDLE_NAME, cert_file)
    ca = LocalCA.load(directory)
    ca.write_bundle()
    return ca.env_lines()


def _saved_files(directory: Path) -> tuple[Path, Path]:
    """ca.pem and ca-key.pem in directory, after checking both are there and the key is private."""
    cert_file, key_file = directory / CERT_NAME, directory / KEY_NAME
    if not cert_file.exists() and not key_file.exists():
        raise CAError(f"no CA in {directory}: create one with `fwdproxy ca init --dir {directory}`")
    for path, other in ((cert_file, key_file), (key_file, cert_file)):
        if not path.exists():
            raise CAError(f"{path} is missing but {other} exists: restore it, or delete {other} "
                          "and run `fwdproxy ca init` (clients must then trust the new CA)")
    _check_private(key_file)
    return cert_file, key_file


def _write_bundle(bundle_file: Path, cert_pem: bytes) -> None:
    """The system's roots plus a CA as one PEM bundle."""
    roots = b""
    system = system_roots_file()
    if system is not None:
        roots = Path(system).read_bytes().rstrip(b"\n") + b"\n"
    bundle_file.write_bytes(roots + cert_pem)


def _exports(bundle_file: Path, cert_file: Path) -> list[str]:
    """``export`` lines that make common clients trust a CA."""
    bundle, cert = shlex.quote(str(bundle_file)), shlex.quote(str(cert_file))
    return ([f"export {name}={bundle}" for name in BUNDLE_VARIABLES]
            + [f"export {name}={cert}" for name in EXTRA_CA_VARIABLES])


@dataclass
class LocalCA:
    """A CA held in memory with the files it came from (``directory`` is None for a throwaway one)."""

    ca: trustme.CA
    directory: Path | None = None

    @classmethod
    def throwaway(cls) -> LocalCA:
        """A CA that lives only in memory (tests, the pytest plugin)."""
        _trustme()
        import trustme

        return cls(trustme.CA(organization_name="fwdproxy",
                              organization_unit_name="fwdproxy throwaway CA"))

    @classmethod
    def create(cls, directory: Path) -> LocalCA:
        """A new CA written to directory; refuses to overwrite an existing one."""
        _trustme()
        import trustme

        cert_file, key_file = directory / CERT_NAME, directory / KEY_NAME
        for path in (cert_file, key_file):
            if path.exists():
                raise CAError(f"{path} already exists; `fwdproxy ca show` describes it. To start "
                              f"over, delete {cert_file} and {key_file} (clients must then trust the new CA)")
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="fwdproxy", organization_unit_name=_unit_name())
        # The key file is created 0600 from the start: never readable by others, not even briefly.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(ca.private_key_pem.bytes())
        cert_file.write_bytes(ca.cert_pem.bytes())
        return cls(ca, directory)

    @classmethod
    def load(cls, directory: Path) -> LocalCA:
        """The CA saved in directory, after checking it is whole, private and current."""
        _trustme()
        import trustme
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert_file, key_file = _saved_files(directory)
        cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CAError(f"{cert_file} is not a valid PEM certificate ({type(exc).__name__}): restore "
                          f"it, or delete {cert_file} and {key_file} and run `fwdproxy ca init`") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"{key_file} is not an unencrypted PEM private key ({exc}): restore it, "
                          f"or delete {cert_file} and {key_file} and run `fwdproxy ca init`") from None
        _check_pair(cert, key, cert_file, key_file)
        return cls(trustme.CA.from_pem(cert_pem, key_pem), directory)

    @classmethod
    def load_or_create(cls, directory: Path) -> tuple[LocalCA, bool]:
        """The CA in directory, created first if there is none; and whether it was created."""
        if not (directory / CERT_NAME).exists() and not (directory / KEY_NAME).exists():
            return cls.create(directory), True
        return cls.load(directory), False

    @property
    def cert(self) -> x509.Certificate:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())

    @property
    def cert_file(self) -> Path:
        if self.directory is None:
            raise CAError("this CA has no files")
        return self.directory / CERT_NAME

    @property
    def bundle_file(self) -> Path:
        if self.directory is None:
            raise CAError("this CA has no files")
        return self.directory / BUNDLE_NAME

    def describe(self) -> list[str]:
        """What ``fwdproxy ca show`` prints: path, subject, SHA-256 fingerprint, expiry."""
        from cryptography.hazmat.primitives import hashes

        cert = self.cert
        digest = cert.fingerprint(hashes.SHA256()).hex().upper()
        return [f"certificate: {self.cert_file}",
                f"subject:     {cert.subject.rfc4514_string()}",
                f"sha256:      {':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))}",
                f"expires:     {not_after(cert):%Y-%m-%d %H:%M:%S} UTC"]

    def write_bundle(self) -> Path:
        """Write the system's roots plus this CA as one PEM bundle; its path."""
        _write_bundle(self.bundle_file, self.ca.cert_pem.bytes())
        return self.bundle_file

    def env_lines(self) -> list[str]:
        """``export`` lines that make common clients trust this CA (after write_bundle)."""
        return _exports(self.bundle_file, self.cert_file)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    """When cert expires, timezone-aware (``not_valid_after_utc`` is cryptography 42+; Debian 12 has 38)."""
    aware = getattr(cert, "not_valid_after_utc", None)
    if isinstance(aware, datetime.datetime):
        return aware
    return cert.not_valid_after.replace(tzinfo=datetime.UTC)


def system_roots_file() -> str | None:
    """The PEM file of the system's trusted roots, if this platform has one."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _unit_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"fwdproxy local CA for {user} on {socket.gethostname()}"


def _check_private(key_file: Path) -> None:
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        raise CAError(f"{key_file} can be read by other users (mode {mode:04o}); "
                      f"fix: chmod 600 {key_file}")


def _check_pair(cert: x509.Certificate, key: PrivateKey, cert_file: Path, key_file: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise CAError(f"{key_file} is not the key of {cert_file}: restore the matching pair, or delete "
                      "both and run `fwdproxy ca init`")
    if not_after(cert) <= datetime.datetime.now(datetime.UTC):
        raise CAError(f"{cert_file} expired on {not_after(cert):%Y-%m-%d}: delete {cert_file} "
                      f"and {key_file} and run `fwdproxy ca init`")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(f"{cert_file} is not a CA certificate: point --ca-dir at a folder made by "
                      "`fwdproxy ca init`")
