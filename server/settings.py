"""Configuration: every ASTROQ_* variable is read here, once.

Values come from the environment, then from a `.env` file in the working
directory (the environment wins). A bad value stops start-up with a message
that names the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the key."""


def read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _positive_float(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {raw!r}") from None
    if value < 0 or value != value:
        raise ConfigError(f"{key} must not be negative, got {raw!r}")
    return value


def _int(key: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {raw!r}")
    return value


def _bool(key: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be 0 or 1, got {raw!r}")


def _log_level(key: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{key} must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = field(default=None, repr=False)
    access_ttl_s: float = 900.0
    refresh_ttl_s: float = 1_209_600.0
    admin_email: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    offer_timeout_s: float = 15.0
    max_missed: int = 3
    reconnect_grace_s: float = 30.0
    metrics_port: int = 9100
    matcher_lease_s: float = 3.0
    max_wait_s: float = 1800.0
    allowed_origins: tuple[str, ...] = ()
    ws_rate: float = 20.0
    ws_burst: float = 40.0
    login_fails: int = 5
    demo: bool | None = None
    data_dir: Path = Path(".astroq")
    # Not in the contract: isolates the Redis keys of one deployment (tests use it).
    redis_prefix: str = "astroq"
    log_level: str = "INFO"

    def require_secret(self) -> str:
        if not self.jwt_secret:
            raise ConfigError("ASTROQ_JWT_SECRET is required (at least 32 bytes)")
        if len(self.jwt_secret.encode()) < 32:
            raise ConfigError("ASTROQ_JWT_SECRET must be at least 32 bytes long")
        return self.jwt_secret

    def with_overrides(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "ASTROQ_DATABASE_URL": ("database_url", lambda k, v: v or None),
    "ASTROQ_REDIS_URL": ("redis_url", lambda k, v: v or None),
    "ASTROQ_HOST": ("host", lambda k, v: v),
    "ASTROQ_PORT": ("port", lambda k, v: _int(k, v)),
    "ASTROQ_JWT_SECRET": ("jwt_secret", lambda k, v: v or None),
    "ASTROQ_ACCESS_TTL": ("access_ttl_s", _positive_float),
    "ASTROQ_REFRESH_TTL": ("refresh_ttl_s", _positive_float),
    "ASTROQ_ADMIN_EMAIL": ("admin_email", lambda k, v: v or None),
    "ASTROQ_ADMIN_PASSWORD": ("admin_password", lambda k, v: v or None),
    "ASTROQ_OFFER_TIMEOUT": ("offer_timeout_s", _positive_float),
    "ASTROQ_MAX_MISSED": ("max_missed", lambda k, v: _int(k, v, 1)),
    "ASTROQ_RECONNECT_GRACE": ("reconnect_grace_s", _positive_float),
    "ASTROQ_METRICS_PORT": ("metrics_port", lambda k, v: _int(k, v)),
    "ASTROQ_MATCHER_LEASE": ("matcher_lease_s", _positive_float),
    "ASTROQ_MAX_WAIT": ("max_wait_s", _positive_float),
    "ASTROQ_ALLOWED_ORIGINS": (
        "allowed_origins",
        lambda k, v: tuple(o.strip().rstrip("/") for o in v.split(",") if o.strip()),
    ),
    "ASTROQ_WS_RATE": ("ws_rate", _positive_float),
    "ASTROQ_WS_BURST": ("ws_burst", _positive_float),
    "ASTROQ_LOGIN_FAILS": ("login_fails", lambda k, v: _int(k, v, 1)),
    "ASTROQ_DEMO": ("demo", _bool),
    "ASTROQ_DATA_DIR": ("data_dir", lambda k, v: Path(v)),
    "ASTROQ_REDIS_PREFIX": ("redis_prefix", lambda k, v: v),
    "ASTROQ_LOG_LEVEL": ("log_level", lambda k, v: _log_level(k, v)),
}


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Reads the environment (then `.env`) into Settings; raises ConfigError naming the key."""
    source: dict[str, str] = {}
    if dotenv is not None:
        source.update(read_dotenv(dotenv))
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for key, (name, parse) in _PARSERS.items():
        if key in source:
            values[name] = parse(key, source[key])
    settings = Settings(**values)
    if settings.matcher_lease_s <= 0:
        raise ConfigError("ASTROQ_MATCHER_LEASE must be above 0")
    if settings.offer_timeout_s <= 0:
        raise ConfigError("ASTROQ_OFFER_TIMEOUT must be above 0")
    if settings.ws_rate <= 0 or settings.ws_burst < 1:
        raise ConfigError("ASTROQ_WS_RATE must be above 0 and ASTROQ_WS_BURST at least 1")
    return settings


SETTING_NAMES = tuple(f.name for f in fields(Settings))
