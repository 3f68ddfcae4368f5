"""The swapper's settings: defaults, aliases, secrets from files, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.swapper.settings import Settings

pytestmark = pytest.mark.unit

REAL = {
    "S3_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
    "S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "S3_SECRET_ACCESS_KEY": "s3-secret-value-0123456789",
    "S3_BUCKET": "faces",
    "RUNPOD_API_KEY": "rpa_0123456789abcdefghijklmnop",
    "FACE_SWAP_ENDPOINT": "abc123",
}


STORE = {k: REAL[k] for k in ("S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")}


def load(**env: str) -> Settings:
    return Settings.from_env(env)


def test_without_a_store_the_swapper_says_it_needs_one() -> None:
    with pytest.raises(ConfigError, match=r"^S3_ENDPOINT_URL is required but not set \(.*services.stack up"):
        load()
    with pytest.raises(ConfigError, match=r"^S3_ACCESS_KEY_ID or R2_ACCESS_KEY_ID or S3_ACCESS_KEY_ID_FILE is "
                                          r"required but not set; S3_SECRET_ACCESS_KEY or"):
        load(S3_ENDPOINT_URL="https://s3.example")


def test_defaults_with_only_a_store_set_disable_swapping() -> None:
    settings = load(**STORE)
    assert not settings.storage.create_bucket and settings.storage.manage_lifecycle
    assert settings.storage.region == "auto"
    assert settings.storage.bucket == "facegen"
    assert not settings.runpod.enabled
    assert settings.runpod.api_base == "https://api.runpod.ai/v2"
    assert settings.runpod.process_type == "single_image"
    assert settings.runpod.deadline_s == 300
    assert settings.listen == "127.0.0.1:50053" and settings.log_level == "INFO"


def test_real_configuration() -> None:
    settings = load(**REAL, FACE_SWAP_BACKUP_ENDPOINTS="def456, ghi789,abc123",
                    FACE_SWAP_PROCESS_TYPE="single-image", FACE_SWAP_DEADLINE_SECONDS="120")
    assert settings.storage.endpoint == "https://acc.r2.cloudflarestorage.com"
    assert not settings.storage.create_bucket
    assert settings.runpod.endpoints == ("abc123", "def456", "ghi789")
    assert settings.runpod.process_type == "single-image"
    assert settings.runpod.deadline_s == 120


def test_secrets_are_not_in_repr() -> None:
    text = repr(load(**REAL))
    assert "rpa_0123456789" not in text
    assert "s3-secret-value" not in text


def test_r2_aliases_and_account_id() -> None:
    settings = load(R2_ACCOUNT_ID="acc42", R2_ACCESS_KEY_ID="id", R2_SECRET_ACCESS_KEY="secret",
                    R2_BUCKET="r2-bucket")
    assert settings.storage.endpoint == "https://acc42.r2.cloudflarestorage.com"
    assert settings.storage.access_key_id.get_secret_value() == "id"
    assert settings.storage.bucket == "r2-bucket"


def test_api_key_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("rpa_from_file_0123456789abc\n")
    env = {k: v for k, v in REAL.items() if k != "RUNPOD_API_KEY"}
    settings = load(**env, RUNPOD_API_KEY_FILE=str(secret))
    assert settings.runpod.api_key is not None
    assert settings.runpod.api_key.get_secret_value() == "rpa_from_file_0123456789abc"


@pytest.mark.parametrize(("env", "message"), [
    ({"FACE_SWAP_ENDPOINT": "abc"}, "RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is required when FACE_SWAP_ENDPOINT"),
    ({"FACE_SWAP_BACKUP_ENDPOINTS": "b1"}, "FACE_SWAP_BACKUP_ENDPOINTS is set but FACE_SWAP_ENDPOINT is not"),
    ({"FACE_SWAP_ENDPOINT": "a/b", "RUNPOD_API_KEY": "k"}, "endpoint id 'a/b' in FACE_SWAP_ENDPOINT"),
    ({"S3_ENDPOINT_URL": "ftp://x"}, "S3_ENDPOINT_URL='ftp://x' is not an http(s) URL"),
    ({"S3_BUCKET": "Bad_Bucket"}, "S3_BUCKET='Bad_Bucket' is not a valid bucket name"),
    ({"RUNPOD_API_BASE": "https://user:pw@api.example/v2"}, "must not carry credentials in the URL"),
    ({"FACE_SWAP_DEADLINE_SECONDS": "1000"}, "S3_TEMP_PRESIGN_EXPIRY_SECONDS=900 must be at least"),
    ({"FACE_SWAP_POLL_MIN_MS": "500", "FACE_SWAP_POLL_MAX_MS": "100"}, "FACE_SWAP_POLL_MAX_MS=100 is below"),
    ({"FACE_SWAP_RATE_SAFETY": "1.5"}, "FACE_SWAP_RATE_SAFETY='1.5' is outside the allowed range [0.01, 1]"),
    ({"S3_MANAGE_LIFECYCLE": "maybe"}, "S3_MANAGE_LIFECYCLE='maybe' is not a boolean"),
    ({"FACE_SWAP_DEADLINE_SECONDS": "soon"}, "FACE_SWAP_DEADLINE_SECONDS='soon' is not a number"),
    ({"SWAPPER_MAX_IN_FLIGHT": "0"}, "SWAPPER_MAX_IN_FLIGHT='0' is outside the allowed range [1, 100000]"),
])
def test_bad_configuration_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**{**STORE, **env})
    assert message in str(caught.value)


def test_redis_is_optional_and_checked() -> None:
    assert load(**STORE).redis is None
    settings = load(**STORE, REDIS_URL="redis://:pw@cache:6379/2", SWAPPER_RECORD_GRACE_SECONDS="90")
    assert settings.redis is not None and settings.redis.url == "redis://:pw@cache:6379/2"
    assert settings.record_grace_s == 90
    assert "pw" not in repr(settings)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load(**STORE, REDIS_URL="http://cache:6379")


def test_result_checks_default_to_the_unchanged_check() -> None:
    checks = load(**STORE).checks
    assert (checks.verify, checks.unchanged, checks.identity) == ("unchanged", True, False)
    assert checks.identity_threshold == 0.6 and checks.identity_processes == 1
    off = load(**STORE, FACE_SWAP_VERIFY=" OFF ").checks
    assert (off.unchanged, off.identity) == (False, False)


def test_the_identity_check_is_configured_when_dlib_is_installed() -> None:
    checks = load(**STORE, FACE_SWAP_VERIFY="identity", FACE_SWAP_IDENTITY_THRESHOLD="0.5",
                  FACE_SWAP_IDENTITY_PROCESSES="2").checks
    assert (checks.unchanged, checks.identity, checks.identity_threshold, checks.identity_processes) == (
        True, True, 0.5, 2)


def test_the_identity_check_without_dlib_stops_the_swapper_saying_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "dlib" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"^FACE_SWAP_VERIFY=identity needs dlib, which this installation lacks: "
                                          r"install the identity extra \(pip install 'facegen\[identity\]'"):
        load(**STORE, FACE_SWAP_VERIFY="identity")


@pytest.mark.parametrize(("env", "message"), [
    ({"FACE_SWAP_VERIFY": "faces"}, "FACE_SWAP_VERIFY='faces' is not one of off, unchanged, identity"),
    ({"FACE_SWAP_IDENTITY_THRESHOLD": "0"}, "FACE_SWAP_IDENTITY_THRESHOLD='0' is outside the allowed range (0.0, 2]"),
    ({"FACE_SWAP_IDENTITY_PROCESSES": "0"}, "FACE_SWAP_IDENTITY_PROCESSES='0' is outside the allowed range [1, 64]"),
])
def test_bad_result_check_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**STORE, **env)
    assert str(caught.value) == message
