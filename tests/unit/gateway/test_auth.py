"""The gateway's bearer tokens: the tokens file, the caller's name, the comparison, the reload."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.config import ConfigError
from services.gateway import auth
from services.gateway.auth import ANONYMOUS, AuthenticationFailed, Authenticator, parse_tokens
from services.gateway.settings import Settings

pytestmark = pytest.mark.unit

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210"


def _write(path: Path, text: str) -> Path:
    """Writes ``text`` to a new file and renames it over ``path``, as a Secret volume update does."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)
    return path


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "tokens", f"# callers\n\nalice: {ALICE}\n  bob:{BOB}  \r\n")


def _bearer(token: str, scheme: str = "Bearer") -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"{scheme} {token}")]


def test_the_file_names_each_caller(tokens_file: Path) -> None:
    authenticator = Authenticator(tokens_file)
    assert authenticator.required and authenticator.callers == ["alice", "bob"]
    assert authenticator.caller(_bearer(ALICE)) == "alice"
    assert authenticator.caller(_bearer(BOB)) == "bob"
    assert authenticator.caller([("authorization", f"Bearer {BOB}".encode())]) == "bob"
    assert authenticator.describe() == f"{tokens_file} (alice, bob)"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_scheme_is_accepted_in_any_letter_case(tokens_file: Path, scheme: str) -> None:
    assert Authenticator(tokens_file).caller(_bearer(ALICE, scheme)) == "alice"
    assert Authenticator(tokens_file).caller([("authorization", f"  {scheme}   {ALICE}  ")]) == "alice"


@pytest.mark.parametrize(("metadata", "reason"), [
    ([], "no authorization metadata"),
    (None, "no authorization metadata"),
    ([("authorization", ALICE)], "not a bearer token"),
    ([("authorization", f"Basic {ALICE}")], "not a bearer token"),
    ([("authorization", "Bearer ")], "not a bearer token"),
    ([("authorization", f"Bearer {ALICE}x")], "unknown token"),
    ([("authorization", f"Bearer {ALICE[:-1]}")], "unknown token"),
    ([("authorization", "Bearer default")], "unknown token"),
])
def test_anything_but_a_known_bearer_token_is_refused_saying_why(
        tokens_file: Path, metadata: list[tuple[str, str]] | None, reason: str) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        Authenticator(tokens_file).caller(metadata)
    assert str(caught.value) == reason
    assert ALICE not in str(caught.value)


def test_every_known_token_is_compared_whichever_matches(tokens_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(len(b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authenticator = Authenticator(tokens_file)
    for token in (ALICE, BOB, "nobody-0123456789abcdef"):
        compared.clear()
        with contextlib.suppress(AuthenticationFailed):
            authenticator.caller(_bearer(token))
        # Fixed-length digests, every one of them: neither the length nor the position of a match shows.
        assert compared == [32, 32], token


def test_the_single_token_is_the_caller_default_and_no_token_means_anyone() -> None:
    single = Authenticator(single_token=SecretStr("a-long-secret-token-value-123"))
    assert single.caller(_bearer("a-long-secret-token-value-123")) == "default"
    assert single.describe() == "…-123"
    anyone = Authenticator()
    assert not anyone.required and anyone.caller(None) == ANONYMOUS and anyone.describe() == "off"


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no token"),
    ("# only a comment\n", "holds no token"),
    (f"alice {ALICE}", "line 1: expected 'name: token'"),
    (f"al ice: {ALICE}", "line 1: the name is not"),
    (f": {ALICE}", "line 1: the name is not"),
    ("alice: short", "line 1 (alice): the token is shorter than 16 characters"),
    ("alice: two words here and more", "line 1 (alice): the token is empty or holds spaces"),
    ("alice: tökén-with-accents-0123456789", "holds spaces or non-ASCII"),
    (f"alice: {ALICE}\nalice: {BOB}", "line 2: the name alice is listed twice"),
    (f"alice: {ALICE}\nbob: {ALICE}", "line 2 (bob): the same token as alice"),
])
def test_a_malformed_file_names_the_line_and_never_shows_a_token(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_tokens(text)
    assert message in str(caught.value)
    assert ALICE not in str(caught.value) and BOB not in str(caught.value)


def test_a_bad_file_at_start_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GATEWAY_TOKENS_FILE=.*/missing cannot be read"):
        Authenticator(tmp_path / "missing")
    with pytest.raises(ConfigError, match="line 1: expected 'name: token'"):
        Authenticator(_write(tmp_path / "tokens", "just-a-token-without-a-name\n"))


def test_the_file_and_the_single_token_do_not_go_together(tokens_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"GATEWAY_TOKENS_FILE and GATEWAY_AUTH_TOKEN .* are both set"):
        Settings.from_env({"GATEWAY_TOKENS_FILE": str(tokens_file), "GATEWAY_AUTH_TOKEN": "x" * 20})
    settings = Settings.from_env({"GATEWAY_TOKENS_FILE": str(tokens_file), "GATEWAY_RELOAD_SECONDS": "0.5"})
    assert settings.tokens_file == tokens_file and settings.reload_seconds == 0.5


def test_a_changed_file_applies_and_a_malformed_one_keeps_the_tokens_in_force(
        tokens_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    authenticator = Authenticator(tokens_file)
    assert not authenticator.reload_if_changed()

    carol = "carol-token-00112233445566"
    _write(tokens_file, f"alice: {ALICE}\ncarol: {carol}\n")
    assert authenticator.reload_if_changed()
    assert authenticator.caller(_bearer(carol)) == "carol"
    with pytest.raises(AuthenticationFailed):
        authenticator.caller(_bearer(BOB))
    assert any("event=gateway.tokens_reloaded" in r.getMessage() and "callers=alice,carol" in r.getMessage()
               for r in caplog.records)

    for broken in (f"alice: {ALICE}\ncarol {carol}\n", ""):
        caplog.clear()
        _write(tokens_file, broken)
        assert not authenticator.reload_if_changed()
        assert authenticator.caller(_bearer(carol)) == "carol", "the tokens in force stay"
        (line,) = [r for r in caplog.records if "event=gateway.tokens_rejected" in r.getMessage()]
        assert line.levelno == logging.ERROR and "kept=alice,carol" in line.getMessage()
        assert carol not in line.getMessage() and ALICE not in line.getMessage()

    tokens_file.unlink()
    assert not authenticator.reload_if_changed()
    assert authenticator.caller(_bearer(ALICE)) == "alice"
    _write(tokens_file, f"bob: {BOB}\n")
    assert authenticator.reload_if_changed()
    assert authenticator.callers == ["bob"]
