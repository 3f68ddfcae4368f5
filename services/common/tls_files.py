"""The PEM files of TLS: which are set, and whether they load as a usable set.

No gRPC here (``services.common.config`` checks the files at start, and the
face-swap worker's environment, which shares that module, has no gRPC):
``services.common.tls`` makes credentials from what this module loads. Keys
must not be encrypted (gRPC takes no passphrase: keep the file itself
private, as a mounted Secret is).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

# No certificate, key or CA bundle comes near this; a larger file is a mistake, not a certificate.
MAX_PEM_BYTES = 1024 * 1024
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one side of a connection, and the variables that named them (for messages)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    variables: tuple[str, str, str] = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")

    @property
    def enabled(self) -> bool:
        """True when any file is set: the connection uses TLS."""
        return any(path is not None for path in (self.cert, self.key, self.ca))

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files that are set."""
        return tuple(path for path in (self.cert, self.key, self.ca) if path is not None)

    @property
    def server_mode(self) -> str:
        """``off``, ``tls`` or ``mtls`` (client certificates required), for the start-up log line."""
        return "off" if not self.enabled else "mtls" if self.ca is not None else "tls"


@dataclass(frozen=True)
class Pem:
    """The contents of a TlsFiles, checked."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None


class ChangedWhileRead(ValueError):
    """The files changed between two reads of one load (a replacement under way): read again later."""


def check_server_files(files: TlsFiles) -> None:
    """ValueError, naming the variable, unless ``files`` is off or a usable server set (cert and key, CA optional)."""
    if not files.enabled:
        return
    cert_var, key_var, ca_var = files.variables
    if files.cert is None or files.key is None:
        alone = f" ({ca_var} alone is not enough)" if files.cert is None and files.key is None else ""
        raise ValueError(f"{cert_var} and {key_var} must both be set to serve TLS{alone}")
    load(files)


def check_client_files(files: TlsFiles) -> None:
    """ValueError, naming the variable, unless ``files`` is off or a usable client set (a CA alone is one)."""
    if (files.cert is None) != (files.key is None):
        cert_var, key_var, _ = files.variables
        raise ValueError(f"{cert_var} and {key_var} go together: set both, or neither")
    load(files)


def load(files: TlsFiles) -> Pem:
    """Reads and checks the files; ValueError naming the variable and the file when one is unusable."""
    first = _read_all(files)
    cert_var, key_var, _ = files.variables
    if files.cert is not None and files.key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(files.cert, files.key, password=_no_password)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{key_var}={files.key} is not the key of {cert_var}={files.cert} ({exc})") from None
    if files.ca is not None:
        try:
            ssl.create_default_context(cafile=str(files.ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{files.variables[2]}={files.ca} is not a CA bundle ({exc})") from None
    # ssl read the files by their paths: make sure it checked the bytes read above.
    if _read_all(files) != first:
        raise ChangedWhileRead("the files changed while they were read")
    return first


def load_settled(files: TlsFiles, attempts: int = 3) -> Pem:
    """``load``, read again while a replacement of the files is under way."""
    for _ in range(attempts - 1):
        with contextlib.suppress(ChangedWhileRead):
            return load(files)
    return load(files)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted: gRPC needs an unencrypted PEM key (keep the file itself private)")


def _read_all(files: TlsFiles) -> Pem:
    cert_var, key_var, ca_var = files.variables
    return Pem(cert=_read(files.cert, cert_var, _CERTIFICATE, "a PEM certificate"),
               key=_read(files.key, key_var, _PRIVATE_KEY, "a PEM private key"),
               ca=_read(files.ca, ca_var, _CERTIFICATE, "a PEM certificate"))


def _read(path: Path | None, variable: str, marker: bytes, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{variable}={path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES or marker not in data:
        raise ValueError(f"{variable}={path} does not hold {what}")
    if marker == _PRIVATE_KEY and b"ENCRYPTED" in data:
        raise ValueError(f"{variable}={path} is encrypted: gRPC needs an unencrypted PEM key "
                         "(keep the file itself private)")
    return data
