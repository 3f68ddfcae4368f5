"""TLS files: what each service refuses at start, and how a server notices new certificates."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.config import ConfigError
from services.common.tls import ServerCertificates, channel_credentials
from services.common.tls_files import TlsFiles, check_client_files
from services.common.watched_files import WatchedFiles
from services.gateway.settings import Settings as GatewaySettings
from services.generator.settings import Settings as GeneratorSettings
from services.stack.certs import CertificateAuthority, make_stack_certificates
from tests.certificates import Pki, make_pki, replace

pytestmark = pytest.mark.unit


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _generator(environ: dict[str, str]) -> GeneratorSettings:
    return GeneratorSettings.from_env(environ)


def test_a_certificate_key_and_ca_make_a_mutual_tls_server(pki: Pki) -> None:
    settings = _generator({"GENERATOR_TLS_CERT_FILE": str(pki.server.cert),
                           "GENERATOR_TLS_KEY_FILE": str(pki.server.key), "GENERATOR_TLS_CA_FILE": str(pki.ca)})
    assert settings.tls == TlsFiles(pki.server.cert, pki.server.key, pki.ca, settings.tls.variables)
    assert settings.tls.server_mode == "mtls"
    assert _generator({}).tls.server_mode == "off"
    without_ca = {"GENERATOR_TLS_CERT_FILE": str(pki.server.cert), "GENERATOR_TLS_KEY_FILE": str(pki.server.key)}
    assert _generator(without_ca).tls.server_mode == "tls"


@pytest.mark.parametrize(("files", "message"), [
    ({"ca": "ca"}, "GENERATOR_TLS_CERT_FILE and GENERATOR_TLS_KEY_FILE must both be set to serve TLS "
                   "(GENERATOR_TLS_CA_FILE alone is not enough)"),
    ({"cert": "server.crt"}, "must both be set"),
    ({"cert": "server.crt", "key": "missing.key"}, "GENERATOR_TLS_KEY_FILE={dir}/missing.key cannot be read"),
    ({"cert": "server.key", "key": "server.key"}, "GENERATOR_TLS_CERT_FILE={dir}/server.key does not hold a PEM "
                                                  "certificate"),
    ({"cert": "server.crt", "key": "client.key"}, "GENERATOR_TLS_KEY_FILE={dir}/client.key is not the key of "
                                                  "GENERATOR_TLS_CERT_FILE={dir}/server.crt"),
    ({"cert": "server.crt", "key": "server.key", "ca": "server.key"}, "GENERATOR_TLS_CA_FILE={dir}/server.key "
                                                                      "does not hold a PEM certificate"),
    ({"cert": "server.crt", "key": "encrypted.key"}, "GENERATOR_TLS_KEY_FILE={dir}/encrypted.key is encrypted"),
])
def test_unusable_files_stop_the_service_at_start_naming_the_variable(
        pki: Pki, files: dict[str, str], message: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (pki.directory / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    environ = {f"GENERATOR_TLS_{part.upper()}_FILE": str(pki.directory / name) for part, name in files.items()}
    with pytest.raises(ConfigError) as caught:
        _generator(environ)
    assert message.format(dir=pki.directory) in str(caught.value)


def test_the_gateway_names_its_upstream_variables_and_takes_a_ca_alone(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_UPSTREAM_TLS_CERT_FILE and GATEWAY_UPSTREAM_TLS_KEY_FILE go "
                                          "together"):
        GatewaySettings.from_env({"GATEWAY_UPSTREAM_TLS_CERT_FILE": str(pki.client.cert)})
    with pytest.raises(ConfigError, match=r"GATEWAY_UPSTREAM_TLS_KEY_FILE=.*server\.key is not the key of "
                                          r"GATEWAY_UPSTREAM_TLS_CERT_FILE"):
        GatewaySettings.from_env({"GATEWAY_UPSTREAM_TLS_CERT_FILE": str(pki.client.cert),
                                  "GATEWAY_UPSTREAM_TLS_KEY_FILE": str(pki.server.key)})
    settings = GatewaySettings.from_env({"GATEWAY_UPSTREAM_TLS_CA_FILE": str(pki.ca)})
    assert settings.upstream_tls.enabled and settings.tls.server_mode == "off"
    assert channel_credentials(settings.upstream_tls) is not None
    assert channel_credentials(TlsFiles()) is None
    check_client_files(TlsFiles(pki.client.cert, pki.client.key, pki.ca))


def test_the_stack_certificates_make_a_consistent_set(tmp_path: Path) -> None:
    made = make_stack_certificates(tmp_path / "tls")
    for pair in (made.gateway, made.gateway_client, made.generator, made.swapper):
        check_client_files(TlsFiles(pair.cert, pair.key, made.ca))
        assert pair.key.stat().st_mode & 0o077 == 0, f"{pair.key} is readable by others"


def test_watched_files_see_a_rename_over_an_in_place_rewrite_and_a_file_coming_back(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("a")
    watch = WatchedFiles(path)
    assert not watch.changed()
    fresh = tmp_path / "fresh"
    fresh.write_text("b")
    os.replace(fresh, path)
    assert watch.changed() and not watch.changed()
    path.write_text("longer")
    assert watch.changed()
    path.unlink()
    assert watch.changed()
    path.write_text("back")
    assert watch.changed() and not watch.changed()
    watch.forget()
    assert watch.changed()


def test_a_server_takes_new_files_once_and_keeps_its_certificate_when_new_ones_do_not_load(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    certificates = ServerCertificates(pki.server_files())
    assert certificates.fetch() is None, "nothing changed"
    renewed = pki.authority.issue(pki.directory / "renewed", "server")
    replace(pki.server, renewed)
    assert certificates.fetch() is not None
    assert certificates.fetch() is None, "the same files again"

    caplog.set_level(logging.INFO)
    pki.server.key.write_bytes(pki.client.key.read_bytes())  # half an update: a key of another certificate
    assert certificates.fetch() is None
    rejected = [r for r in caplog.records if "event=tls.reload_rejected" in r.getMessage()]
    assert len(rejected) == 1 and rejected[0].levelno == logging.ERROR
    assert "is not the key of" in rejected[0].getMessage()
    assert certificates.fetch() is None, "a rejected set is not tried again until the files change"

    pki.server.key.write_bytes(renewed.key.read_bytes())
    assert certificates.fetch() is not None
    assert any("event=tls.reloaded" in r.getMessage() for r in caplog.records)


def test_a_new_ca_replaces_the_one_clients_are_checked_against(pki: Pki) -> None:
    certificates = ServerCertificates(pki.server_files())
    other = CertificateAuthority("next CA")
    other.write(pki.ca)
    assert certificates.fetch() is not None
