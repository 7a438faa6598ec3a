"""Interception for tests: the session's CA, the files clients trust, and the variables pointing at them.

One throwaway trustme CA per session (never a CA folder on disk) signs the
leaves every intercepting proxy of the session presents; its certificate and a
bundle (the system's roots, this CA, and the session's origin CA, so tunnels
that are not intercepted still verify) are written to the session's temporary
folder. ``FwdProxy.intercept`` turns interception on for one test with it.
"""

from __future__ import annotations

from pathlib import Path

from ..tls.ca import BUNDLE_VARIABLES, EXTRA_CA_VARIABLES, LocalCA, system_roots_file
from ..tls.leaves import LeafMint
from .origins import OriginCA


class SessionTLS:
    """The session's interception CA, its files, and the leaves it mints."""

    def __init__(self, directory: Path, origin_ca: OriginCA) -> None:
        ca = LocalCA.throwaway()
        self.mint = LeafMint(ca.ca)
        self.ca_file = str(directory / "fwdproxy-intercept-ca.pem")
        ca.ca.cert_pem.write_to_path(self.ca_file)
        self.origin_ca_file = origin_ca.ca_file
        self.bundle_file = str(directory / "fwdproxy-ca-bundle.pem")
        system = system_roots_file()
        roots = Path(system).read_bytes().rstrip(b"\n") + b"\n" if system else b""
        ours = ca.ca.cert_pem.bytes() + Path(origin_ca.ca_file).read_bytes()
        Path(self.bundle_file).write_bytes(roots + ours)

    def env(self) -> dict[str, str]:
        """The CA variables of common clients (what ``fwdproxy ca env`` exports)."""
        return {**{name: self.bundle_file for name in BUNDLE_VARIABLES},
                **{name: self.ca_file for name in EXTRA_CA_VARIABLES}}
