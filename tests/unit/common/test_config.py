"""Typed settings from the environment."""

from pathlib import Path

import pytest

from services.common.config import ConfigError, Env, ServerSettings
from services.common.secrets import mask

pytestmark = pytest.mark.unit


def test_typed_reads_and_defaults() -> None:
    env = Env({"A": "7", "B": "0.5", "C": "yes", "D": " x, ,y ", "E": ""})
    assert env.get_int("A", 1) == 7
    assert env.get_float("B", 1.0) == 0.5
    assert env.get_bool("C", False) is True
    assert env.get_list("D") == ("x", "y")
    assert env.get_int("E", 3) == 3
    assert env.get_str("MISSING", "dflt") == "dflt"
    assert env.optional("E") is None


@pytest.mark.parametrize(
    ("environ", "read", "needle"),
    [
        ({"N": "x"}, lambda e: e.get_int("N", 1), "N='x' is not an integer"),
        ({"N": "500"}, lambda e: e.get_int("N", 1, maximum=100), "outside the allowed range"),
        ({"N": "maybe"}, lambda e: e.get_bool("N", False), "not a boolean"),
        ({}, lambda e: e.get_str("NEEDED"), "NEEDED is required"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], read, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        read(Env(environ))


def test_secret_from_mounted_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("rpa_from_file\n")
    assert Env({"KEY_FILE": str(secret_file), "KEY": "ignored"}).secret("KEY") == "rpa_from_file"
    assert Env({"KEY": "rpa_env"}).secret("KEY") == "rpa_env"
    with pytest.raises(ConfigError, match="KEY_FILE"):
        Env({"KEY_FILE": str(tmp_path / "missing")}).secret("KEY")


def test_server_settings() -> None:
    settings = ServerSettings.from_env("GATEWAY", "127.0.0.1:50051", Env({"GATEWAY_GRACE_SECONDS": "3"}))
    assert settings.listen == "127.0.0.1:50051"
    assert settings.grace_seconds == 3.0
    assert settings.max_message_bytes >= 16 * 1024 * 1024


def test_mask_never_reveals_most_of_a_secret() -> None:
    key = "rpa_YT0B1234567890ABCDEFGHQ1tdxlb"
    masked = mask(key)
    assert masked.startswith("rpa_YT") and masked.endswith("Q1tdxlb")
    assert "1234567890" not in masked
    assert mask("short") == "………"
    assert mask(None) == "<unset>"
