"""Settings from the environment: typed fields, aliases, groups, secrets from files, one clear error per value."""

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.config import CommaList, ConfigError, EnvSettings, LogLevel, Lowercase, ServerSettings
from services.common.redis import RedisSettings
from services.common.secrets import mask

pytestmark = pytest.mark.unit


class Example(ServerSettings):
    """Every kind of field a service declares."""

    model_config = SettingsConfigDict(env_prefix="EXAMPLE_")

    listen: str = "127.0.0.1:7"
    log_level: LogLevel = Field("INFO", validation_alias=AliasChoices("EXAMPLE_LOG_LEVEL", "LOG_LEVEL"))
    count: int = Field(3, ge=1, le=5)
    ratio: float = Field(0.5, ge=0.0)
    enabled: bool = True
    mode: Annotated[Literal["fast", "safe"], Lowercase] = "safe"
    upstream: str = Field("127.0.0.1:1", validation_alias="UPSTREAM_ADDRESS")
    names: CommaList = ()
    token: SecretStr | None = None
    redis: RedisSettings | None = None


def test_names_come_from_the_prefix_or_the_alias_and_values_are_typed() -> None:
    settings = Example.from_env({
        "EXAMPLE_LISTEN": "0.0.0.0:9", "LOG_LEVEL": "debug", "EXAMPLE_COUNT": "4", "EXAMPLE_RATIO": "2.5",
        "EXAMPLE_ENABLED": "no", "EXAMPLE_MODE": " Fast ", "UPSTREAM_ADDRESS": "up:1", "EXAMPLE_NAMES": " x, ,y ",
        "EXAMPLE_UPSTREAM": "ignored: an aliased field reads its alias only", "EXAMPLE_TOKEN": "",
    })
    assert (settings.listen, settings.log_level, settings.count, settings.ratio) == ("0.0.0.0:9", "DEBUG", 4, 2.5)
    assert (settings.enabled, settings.mode, settings.upstream, settings.names) == (False, "fast", "up:1", ("x", "y"))
    assert settings.token is None, "an empty variable counts as unset"
    assert settings.redis is None, "an optional group is None until its key variable (REDIS_URL) is set"
    assert Example.from_env({"EXAMPLE_LOG_LEVEL": "error", "LOG_LEVEL": "debug"}).log_level == "ERROR"


def test_defaults_and_direct_construction_never_read_the_process_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_COUNT", "5")
    assert Example.from_env({}).count == 3
    assert Example(count=2, upstream="u:2").count == 2 and Example().count == 3
    assert Example.from_env().count == 5, "from_env() with no mapping reads os.environ"


def test_groups_are_read_from_the_same_environment() -> None:
    settings = Example.from_env({"REDIS_URL": "redis://:pw@cache:6379/2", "REDIS_CONNECT_TIMEOUT_SECONDS": "0.5"})
    assert settings.redis is not None and settings.redis.connect_timeout_s == 0.5
    assert settings.redis.display_url == "redis://:***@cache:6379/2"
    assert "pw" not in repr(settings)
    with pytest.raises(ConfigError, match=r"^REDIS_URL=<hidden> does not start with redis://"):
        Example.from_env({"REDIS_URL": "http://:pw@cache:6379"})


@pytest.mark.parametrize(("environ", "message"), [
    ({"EXAMPLE_COUNT": "0"}, "EXAMPLE_COUNT='0' is outside the allowed range [1, 5]"),
    ({"EXAMPLE_COUNT": "x"}, "EXAMPLE_COUNT='x' is not an integer (allowed range [1, 5])"),
    ({"EXAMPLE_RATIO": "-1"}, "EXAMPLE_RATIO='-1' is outside the allowed range [0, inf]"),
    ({"EXAMPLE_RATIO": "lots"}, "EXAMPLE_RATIO='lots' is not a number (allowed range [0, inf])"),
    ({"EXAMPLE_ENABLED": "maybe"}, "EXAMPLE_ENABLED='maybe' is not a boolean (use true or false)"),
    ({"EXAMPLE_MODE": "turbo"}, "EXAMPLE_MODE='turbo' is not one of fast, safe"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR"),
    ({"MAX_MESSAGE_BYTES": "1"}, "MAX_MESSAGE_BYTES='1' is outside the allowed range [4194304, 536870912]"),
    ({"EXAMPLE_GRACE_SECONDS": "-2"}, "EXAMPLE_GRACE_SECONDS='-2' is outside the allowed range [0, 3600]"),
    ({"EXAMPLE_COUNT": "9", "EXAMPLE_MODE": "x"},
     "EXAMPLE_COUNT='9' is outside the allowed range [1, 5]; EXAMPLE_MODE='x' is not one of fast, safe"),
])
def test_a_bad_value_is_one_line_naming_the_variable_the_value_and_what_is_allowed(
        environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Example.from_env(environ)
    assert str(caught.value) == message


def test_a_required_value_says_every_name_it_may_come_from() -> None:
    class Needs(EnvSettings):
        key: SecretStr = Field(validation_alias=AliasChoices("S3_KEY", "R2_KEY"))

    with pytest.raises(ConfigError, match=r"^S3_KEY or R2_KEY or S3_KEY_FILE is required but not set$"):
        Needs.from_env({})
    assert Needs.from_env({"R2_KEY": "k"}).key.get_secret_value() == "k"


def test_a_secret_comes_from_its_file_first_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-the-file\n")
    settings = Example.from_env({"EXAMPLE_TOKEN_FILE": str(secret), "EXAMPLE_TOKEN": "from-the-variable"})
    assert settings.token is not None and settings.token.get_secret_value() == "from-the-file"
    assert "from-the-file" not in repr(settings) and "from-the-file" not in str(settings)
    assert Example.from_env({"EXAMPLE_TOKEN": "from-the-variable"}).token == SecretStr("from-the-variable")
    (tmp_path / "empty").write_text("\n")
    assert Example.from_env({"EXAMPLE_TOKEN_FILE": str(tmp_path / "empty")}).token is None
    with pytest.raises(ConfigError, match=r"^EXAMPLE_TOKEN_FILE=\S+missing cannot be read: No such file"):
        Example.from_env({"EXAMPLE_TOKEN_FILE": str(tmp_path / "missing")})


def test_env_names_lists_every_variable_a_class_reads() -> None:
    names = Example.env_names()
    assert {"EXAMPLE_LISTEN", "EXAMPLE_GRACE_SECONDS", "MAX_MESSAGE_BYTES", "LOG_LEVEL", "EXAMPLE_LOG_LEVEL",
            "EXAMPLE_COUNT", "UPSTREAM_ADDRESS", "EXAMPLE_TOKEN", "EXAMPLE_TOKEN_FILE", "REDIS_URL",
            "REDIS_PASSWORD", "REDIS_PASSWORD_FILE"} <= names
    assert "EXAMPLE_UPSTREAM" not in names and "EXAMPLE_REDIS" not in names


def test_server_settings_defaults() -> None:
    settings = ServerSettings.from_env({"GRACE_SECONDS": "3"})
    assert settings.grace_seconds == 3.0 and settings.log_level == "INFO"
    assert settings.max_message_bytes >= 16 * 1024 * 1024


def test_mask_shows_at_most_the_last_four_characters() -> None:
    key = "rpa_YT0B1234567890ABCDEFGHQ1tdxlb"
    masked = mask(key)
    assert masked == "…dxlb"
    assert mask(SecretStr(key)) == masked
    assert mask("fifteen-chars-x") == "…", "a short secret is hidden entirely"
    assert mask("sixteen-chars-xy") == "…s-xy"
    assert mask(None) == "<unset>" and mask("") == "<unset>"
