"""``fwdproxy ca init|show|env``: create, describe and trust the local CA used for interception.

The CA folder is ``--dir`` (or ``--ca-dir``), else FWDPROXY_CA_DIR, else
``certs/`` in a source checkout or a per-user data folder (tls/ca.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .ca import CAError, LocalCA, default_ca_dir, env_lines

TRUST_HINT = ("trust it with `eval \"$(fwdproxy ca env)\"` (`python3 -m proxy ca env` in a checkout); "
              "other clients: docs/interception.md")


def ca_dir(value: str | None) -> Path:
    """The CA folder: the flag, else FWDPROXY_CA_DIR, else the default."""
    return Path(value or os.environ.get("FWDPROXY_CA_DIR") or default_ca_dir()).expanduser()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ca", help="create, show or trust the local CA for --intercept",
        description="The local CA that signs the certificates fwdproxy presents when it intercepts "
                    "TLS (--intercept). Its folder holds ca.pem and ca-key.pem (mode 0600).")
    actions = p.add_subparsers(dest="ca_command", metavar="{init,show,env}", required=True)
    for name, text in (("init", "create a CA (refuses to replace one)"),
                       ("show", "print its path, subject, SHA-256 fingerprint and expiry"),
                       ("env", "write a bundle of the system roots plus the CA, print export lines "
                               "that make common clients trust it")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--dir", "--ca-dir", dest="ca_dir", metavar="DIR", default=None,
                            help=f"the CA folder (default: FWDPROXY_CA_DIR, else {default_ca_dir()})")
    return p


def run(ns: argparse.Namespace) -> int:
    directory = ca_dir(ns.ca_dir)
    try:
        if ns.ca_command == "init":
            ca = LocalCA.create(directory)
            print("\n".join(ca.describe()))
            print(f"created; {TRUST_HINT}", file=sys.stderr)
        elif ns.ca_command == "show":
            print("\n".join(LocalCA.load(directory).describe()))
        else:
            print("\n".join(env_lines(directory)))
    except CAError as exc:
        print(f"fwdproxy: {exc}", file=sys.stderr)
        return 2
    return 0


def ensure_ca(value: str | None) -> tuple[Path, str | None]:
    """The CA folder for --intercept, creating a CA there if it has none; and a line to print if so."""
    directory = ca_dir(value)
    ca, created = LocalCA.load_or_create(directory)
    if not created:
        return directory, None
    return directory, f"fwdproxy: created a CA for --intercept in {ca.cert_file}; {TRUST_HINT}"
