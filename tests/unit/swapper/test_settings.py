"""The swapper's settings: defaults, aliases, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Env
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


def load(**env: str) -> Settings:
    return Settings.from_env(Env(env))


def test_defaults_with_nothing_set_use_the_embedded_store_and_disable_swapping() -> None:
    settings = load()
    assert settings.storage.embedded and settings.storage.create_bucket
    assert settings.storage.region == "auto"
    assert settings.storage.bucket == "facegen"
    assert not settings.runpod.enabled
    assert settings.runpod.api_base == "https://api.runpod.ai/v2"
    assert settings.runpod.process_type == "single_image"
    assert settings.runpod.deadline_s == 300
    assert settings.server.listen == "127.0.0.1:50053"


def test_real_configuration() -> None:
    settings = load(**REAL, FACE_SWAP_BACKUP_ENDPOINTS="def456, ghi789,abc123",
                    FACE_SWAP_PROCESS_TYPE="single-image", FACE_SWAP_DEADLINE_SECONDS="120")
    assert settings.storage.endpoint_url == "https://acc.r2.cloudflarestorage.com"
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
    assert settings.storage.endpoint_url == "https://acc42.r2.cloudflarestorage.com"
    assert settings.storage.access_key_id == "id"
    assert settings.storage.bucket == "r2-bucket"


def test_api_key_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("rpa_from_file_0123456789abc\n")
    env = {k: v for k, v in REAL.items() if k != "RUNPOD_API_KEY"}
    settings = load(**env, RUNPOD_API_KEY_FILE=str(secret))
    assert settings.runpod.api_key == "rpa_from_file_0123456789abc"


@pytest.mark.parametrize(("env", "needle"), [
    ({"FACE_SWAP_ENDPOINT": "abc"}, "RUNPOD_API_KEY"),
    ({"FACE_SWAP_BACKUP_ENDPOINTS": "b1"}, "FACE_SWAP_ENDPOINT"),
    ({"FACE_SWAP_ENDPOINT": "a/b", "RUNPOD_API_KEY": "k"}, "endpoint id"),
    ({"S3_ENDPOINT_URL": "https://s3.example"}, "S3_ACCESS_KEY_ID"),
    ({"S3_ENDPOINT_URL": "ftp://x"}, "S3_ENDPOINT_URL"),
    ({"S3_BUCKET": "Bad_Bucket"}, "S3_BUCKET"),
    ({"RUNPOD_API_BASE": "https://user:pw@api.example/v2"}, "credentials"),
    ({"FACE_SWAP_DEADLINE_SECONDS": "1000"}, "S3_TEMP_PRESIGN_EXPIRY_SECONDS"),
    ({"FACE_SWAP_POLL_MIN_MS": "500", "FACE_SWAP_POLL_MAX_MS": "100"}, "FACE_SWAP_POLL_MAX_MS"),
    ({"FACE_SWAP_RATE_SAFETY": "1.5"}, "FACE_SWAP_RATE_SAFETY"),
    ({"S3_MANAGE_LIFECYCLE": "maybe"}, "S3_MANAGE_LIFECYCLE"),
])
def test_bad_configuration_names_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**env)
    assert needle in str(caught.value)


def test_redis_is_optional_and_checked() -> None:
    assert load().redis is None
    settings = load(REDIS_URL="redis://:pw@cache:6379/2", SWAPPER_RECORD_GRACE_SECONDS="90")
    assert settings.redis is not None and settings.redis.url == "redis://:pw@cache:6379/2"
    assert settings.record_grace_s == 90
    assert "pw" not in repr(settings)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load(REDIS_URL="http://cache:6379")
