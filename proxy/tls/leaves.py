"""Leaf certificates for intercepted names: minted on demand, cached per name, one shared key.

A client that tunnels to ``api.example`` through an intercepting proxy is
shown a certificate for that name signed by the local CA. Minting is the
costly step of interception, so it is done once per name: every leaf shares
one key (generated at start-up, never written to disk), and the server
context holding each leaf is cached. Leaves are short-lived (30 days, the
most any client should need from a development CA) and start an hour in the
past, so a client whose clock is a little behind still accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import tempfile
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from .ca import not_after

if TYPE_CHECKING:
    import trustme
    from cryptography import x509

LEAF_LIFETIME = datetime.timedelta(days=30)
CLOCK_SKEW = datetime.timedelta(hours=1)
# A leaf is minted again this long before it expires.
RENEW_BEFORE = datetime.timedelta(days=1)
MAX_CACHED = 1024
# RFC 1123 labels; SNI carries A-labels (punycode) only (RFC 6066 section 3).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def certificate_name(name: str) -> str | None:
    """The name a leaf can be minted for (lowercase, no trailing dot), or None if it is not one."""
    name = name.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    return name if _DNS_NAME.fullmatch(name) else None


class LeafMint:
    """Mints and caches server contexts presenting a leaf for a name, signed by ``ca``."""

    def __init__(self, ca: trustme.CA, *, max_cached: int = MAX_CACHED) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.ca_pem = ca.cert_pem.bytes()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca_pem)
        self._ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
        self._max_cached = max_cached
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self.minted = 0

    def context(self, name: str) -> ssl.SSLContext:
        """A server context presenting a leaf for name (a DNS name or an IP address)."""
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            cached = self._contexts.get(name)
            if cached is not None and cached[1] - RENEW_BEFORE > now:
                self._contexts.move_to_end(name)
                return cached[0]
        cert = self.mint(name, now)
        context = self._server_context(cert)
        with self._lock:
            self._contexts[name] = (context, not_after(cert))
            self._contexts.move_to_end(name)
            while len(self._contexts) > self._max_cached:
                self._contexts.popitem(last=False)
        return context

    def mint(self, name: str, now: datetime.datetime | None = None) -> x509.Certificate:
        """A leaf certificate for name: SAN DNS name or IP address, server authentication only."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = now or datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwdproxy")])
        except ValueError:
            san = x509.DNSName(name)
            common = [x509.NameAttribute(NameOID.COMMON_NAME, name)] if len(name) <= 64 else []
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwdproxy"), *common])
        ca_ski = self._ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(self._ca_cert.subject)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + LEAF_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        self.minted += 1
        return cert

    def _server_context(self, cert: x509.Certificate) -> ssl.SSLContext:
        from cryptography.hazmat.primitives.serialization import Encoding

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Only HTTP/1.1 is spoken inside: h2-capable clients fall back (RFC 7301).
        context.set_alpn_protocols(["http/1.1"])
        context.sni_callback = self._pick
        # load_cert_chain reads files only: a private temporary file, removed at once.
        fd, path = tempfile.mkstemp(prefix="fwdproxy-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(cert.public_bytes(Encoding.PEM) + self._key_pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        return context

    def _pick(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
              _: ssl.SSLContext) -> int | None:
        """SNI callback: present the leaf for the name the client asked for (RFC 6066 section 3)."""
        name = certificate_name(server_name) if server_name else None
        sslobj.fwdproxy_sni = server_name  # type: ignore[union-attr]
        if name is None:
            return None  # keep the leaf for the CONNECT target
        try:
            sslobj.context = self.context(name)
        except Exception:  # an exception here would surface as an unraisable error
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def __repr__(self) -> str:
        return f"<LeafMint cached={len(self._contexts)} minted={self.minted}>"
