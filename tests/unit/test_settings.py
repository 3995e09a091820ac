"""Configuration: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import ConfigError, Settings, load_settings


def test_defaults_match_the_contract() -> None:
    s = load_settings({}, dotenv=None)
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (s.access_ttl_s, s.refresh_ttl_s) == (900, 1_209_600)
    assert (s.offer_timeout_s, s.max_missed, s.reconnect_grace_s) == (15, 3, 30)
    assert (s.metrics_port, s.matcher_lease_s, s.max_wait_s) == (9100, 3, 1800)
    assert (s.ws_rate, s.ws_burst, s.login_fails) == (20, 40, 5)
    assert s.allowed_origins == () and s.database_url is None and s.redis_url is None


def test_fractions_of_a_second_are_accepted() -> None:
    s = load_settings({"ASTROQ_OFFER_TIMEOUT": "0.25", "ASTROQ_MATCHER_LEASE": "0.5"}, dotenv=None)
    assert s.offer_timeout_s == 0.25 and s.matcher_lease_s == 0.5


@pytest.mark.parametrize(
    "key, value",
    [
        ("ASTROQ_PORT", "eighty"),
        ("ASTROQ_OFFER_TIMEOUT", "-1"),
        ("ASTROQ_MAX_MISSED", "0"),
        ("ASTROQ_RECONNECT_GRACE", "soon"),
        ("ASTROQ_DEMO", "maybe"),
        ("ASTROQ_LOGIN_FAILS", "1.5"),
        ("ASTROQ_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_names_its_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings({key: value}, dotenv=None)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nASTROQ_PORT=9001\nexport ASTROQ_HOST='0.0.0.0'\n")
    assert load_settings({}, dotenv=dotenv).port == 9001
    s = load_settings({"ASTROQ_PORT": "9002"}, dotenv=dotenv)
    assert (s.port, s.host) == (9002, "0.0.0.0")


def test_origins_are_a_comma_separated_list() -> None:
    s = load_settings({"ASTROQ_ALLOWED_ORIGINS": "https://a.example/, https://b.example"}, dotenv=None)
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_the_secret_is_required_long_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="ASTROQ_JWT_SECRET"):
        Settings().require_secret()
    with pytest.raises(ConfigError, match="32 bytes"):
        Settings(jwt_secret="short").require_secret()
    s = Settings(jwt_secret="x" * 40, admin_password="hunter22")
    assert "x" * 40 not in repr(s) and "hunter22" not in repr(s)
