"""Throwaway certificates for the TLS tests: one CA with a server and a client, and an intruder's CA.

Made with the local stack's own CA (``services.stack.certs``), so the tests
check the certificates the stack hands out as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.tls_files import TlsFiles
from services.stack.certs import CertificateAuthority, KeyPair


@dataclass(frozen=True)
class Pki:
    """Files in ``directory``: a CA, a server and a client it signed, and a client signed by another CA."""

    directory: Path
    authority: CertificateAuthority
    ca: Path
    server: KeyPair
    client: KeyPair
    intruder: KeyPair

    def server_files(self, mutual: bool = True) -> TlsFiles:
        """What a server presents, and (``mutual``) the CA its clients' certificates must come from."""
        return TlsFiles(self.server.cert, self.server.key, self.ca if mutual else None)

    def client_credentials(self, pair: KeyPair | None = None, ca: Path | None = None) -> grpc.ChannelCredentials:
        """Channel credentials trusting ``ca`` (this CA by default) and presenting ``pair`` if given."""
        return grpc.ssl_channel_credentials(
            root_certificates=(ca or self.ca).read_bytes(),
            private_key=pair.key.read_bytes() if pair else None,
            certificate_chain=pair.cert.read_bytes() if pair else None)


def make_pki(directory: Path) -> Pki:
    """A new PKI in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority("facegen test CA")
    other = CertificateAuthority("intruder CA")
    return Pki(directory=directory, authority=authority, ca=authority.write(directory / "ca.crt"),
               server=authority.issue(directory, "server"),
               client=authority.issue(directory, "client", server=False, client=True, ips=()),
               intruder=other.issue(directory / "intruder", "intruder", server=False, client=True, ips=()))


def replace(target: KeyPair, source: KeyPair) -> None:
    """Replaces ``target``'s files with ``source``'s content the way a Secret volume does: a new file, renamed over."""
    for destination, origin in ((target.cert, source.cert), (target.key, source.key)):
        fresh = destination.with_name(destination.name + ".new")
        fresh.write_bytes(origin.read_bytes())
        os.replace(fresh, destination)
