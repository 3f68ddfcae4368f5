"""TLS on every gRPC hop: what a server presents and whom it trusts, what a client presents.

A server with a certificate and key (``<SVC>_TLS_CERT_FILE``,
``<SVC>_TLS_KEY_FILE``) serves TLS only; with a CA too (``<SVC>_TLS_CA_FILE``)
it also requires every client to present a certificate signed by that CA
(mutual TLS), and refuses the connection otherwise. gRPC Python can either
require client certificates or not ask for them; there is no "verify one if
offered", so without a CA a server does not ask.

Servers re-read their files when they change, without a restart: gRPC asks a
fetcher before each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``), and ours answers from a ``stat`` of
the files, loading them only when they changed and only if they load as a
consistent set (a key that matches its certificate). A broken set is refused
with one ERROR line and the previous one stays in use. Connections already open
keep the certificate they were made with. Clients read their files when their
channel is made (the gateway makes new upstream channels when its client
certificate changes, ``services.gateway.upstreams``).

The files themselves are read and checked by ``services.common.tls_files``.
"""

from __future__ import annotations

import logging
import threading
import typing
from collections.abc import Callable

import grpc

from services.common import logs
from services.common.tls_files import ChangedWhileRead, Pem, TlsFiles, load, load_settled
from services.common.watched_files import WatchedFiles

log = logging.getLogger(__name__)


def _configuration(pem: Pem) -> grpc.ServerCertificateConfiguration:
    assert pem.cert is not None and pem.key is not None
    return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], root_certificates=pem.ca)


class ServerCertificates:
    """A server's certificate, key and client CA, re-read for new connections when the files change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._watch = WatchedFiles(*files.paths)
        self._lock = threading.Lock()
        self._initial = _configuration(load_settled(files))

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask ``fetch`` before each handshake; mTLS when a CA is set."""
        # types-grpcio says the fetcher returns a configuration; gRPC documents None as "no change".
        fetcher = typing.cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(self._initial, fetcher,
                                                   require_client_authentication=self.files.ca is not None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration when the files changed and load, else None (keep)."""
        with self._lock:  # gRPC may call it from several of its threads at once
            if not self._watch.changed():
                return None
            try:
                configuration = _configuration(load(self.files))
            except ChangedWhileRead:
                self._watch.forget()
                return None
            except ValueError as exc:
                logs.event(log, "tls.reload_rejected", logging.ERROR, cert=self.files.cert, error=exc,
                           kept="the previous certificate")
                return None
            except Exception as exc:  # never let a fetcher error reach gRPC's handshake
                log.exception("event=tls.reload_failed cert=%s error=%s", self.files.cert, exc)
                return None
            logs.event(log, "tls.reloaded", cert=self.files.cert, client_ca=self.files.ca or "-")
            return configuration


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials | None:
    """Reloading server credentials for ``files``, or None when TLS is off."""
    return ServerCertificates(files).credentials() if files.enabled else None


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials | None:
    """Channel credentials from ``files`` (the system's roots when no CA is set), or None when TLS is off."""
    if not files.enabled:
        return None
    pem = load_settled(files)
    return grpc.ssl_channel_credentials(root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert)
