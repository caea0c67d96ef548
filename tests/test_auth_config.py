"""The auth service's settings: documented defaults, and a clear error for a bad value."""

import pytest

from auth_service.config import AuthSettings
from shared.config import ConfigError, load_settings

AUTH_VARIABLES = (
    "BCRYPT_COST",
    "ACCESS_TOKEN_TTL_SECONDS",
    "REFRESH_TOKEN_TTL_SECONDS",
    "LOGIN_THROTTLE_WINDOW_SECONDS",
    "LOGIN_MAX_FAILURES_PER_ACCOUNT",
    "LOGIN_MAX_FAILURES_PER_ADDRESS",
)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in AUTH_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    settings = load_settings(AuthSettings)
    assert settings.bcrypt_cost == 12
    assert settings.access_token_ttl_seconds == 15 * 60
    assert settings.refresh_token_ttl_seconds == 30 * 24 * 3600
    assert settings.login_throttle_window_seconds == 15 * 60
    assert settings.login_max_failures_per_account == 10
    assert settings.login_max_failures_per_address == 100


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BCRYPT_COST", "3"),
        ("BCRYPT_COST", "21"),
        ("BCRYPT_COST", "twelve"),
        ("ACCESS_TOKEN_TTL_SECONDS", "0"),
        ("REFRESH_TOKEN_TTL_SECONDS", "-1"),
        ("LOGIN_THROTTLE_WINDOW_SECONDS", "0"),
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "101"),  # ASVS: at most 100 failures an hour
        ("LOGIN_MAX_FAILURES_PER_ADDRESS", "0"),
    ],
)
def test_a_bad_auth_setting_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(AuthSettings)
    assert variable in str(raised.value.code)
