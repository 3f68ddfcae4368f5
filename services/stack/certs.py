"""A throwaway certificate authority and the certificates the local stack (and its tests) need.

``python -m services.stack up --tls`` makes a new CA at every start and issues
one certificate per service from it, the way cert-manager does in the ``tls``
overlay of ``deploy/k8s``: a server certificate for each service
(``localhost`` and ``127.0.0.1``), and the gateway's client certificate, which
the generator and the swapper require. The CA's key never leaves the process
that made it; nothing here is meant for anything but loopback.

Uses ``cryptography`` (installed with the ``local`` extra); the services never
import this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=7)
# Clocks of the processes that check a certificate may lag the one that made it.
BACKDATE = datetime.timedelta(minutes=5)
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facegen local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Writes the key readable by its owner only."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


class CertificateAuthority:
    """A self-signed CA in memory; ``issue`` writes certificates it signs."""

    def __init__(self, common_name: str = "facegen local CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))

    def write(self, path: Path) -> Path:
        """Writes the CA's certificate (what clients and servers trust) to ``path``."""
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, directory: Path, name: str, *, server: bool = True, client: bool = False,
              dns_names: tuple[str, ...] = LOOPBACK_NAMES, ips: tuple[str, ...] = LOOPBACK_IPS,
              lifetime: datetime.timedelta = LIFETIME) -> KeyPair:
        """Writes ``<name>.crt`` and ``<name>.key`` into ``directory``: a certificate for ``dns_names`` and
        ``ips``, usable by a server, a client or both (its extended key usage)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [*([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
                  *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
        alt_names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        directory.mkdir(parents=True, exist_ok=True)
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key, key)
        return pair


@dataclass(frozen=True)
class StackCertificates:
    """Every file of the local stack's PKI: the CA and one key pair per role."""

    ca: Path
    gateway: KeyPair
    # The gateway's identity on its calls to the generator and the swapper.
    gateway_client: KeyPair
    generator: KeyPair
    swapper: KeyPair


def make_stack_certificates(directory: Path) -> StackCertificates:
    """A new CA and the stack's certificates, written into ``directory`` (keys readable by the owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority()
    return StackCertificates(
        ca=authority.write(directory / "ca.crt"),
        gateway=authority.issue(directory, "gateway"),
        gateway_client=authority.issue(directory, "gateway-client", server=False, client=True,
                                       dns_names=("gateway",), ips=()),
        generator=authority.issue(directory, "generator"),
        swapper=authority.issue(directory, "swapper"),
    )
