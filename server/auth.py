"""Passwords (argon2id), tokens (HS256 JWTs) and the login throttle."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from matcher.keys import Keys
from server.errors import InvalidToken, TooManyAttempts

# OWASP's minimum argon2id profile: strong, and fast enough that registering a
# few hundred test accounts takes seconds, not minutes.
_hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# Verifying against this keeps a login for an unknown email as slow as a real one.
_DUMMY_HASH = _hasher.hash("not a password anyone has")

LOGIN_WINDOW_S = 15 * 60
ADDRESS_FAILS_FACTOR = 10  # one client address may fail 10x as often as one email (SPEC: 5 → 50)


class Role(StrEnum):
    USER = "user"
    ASTROLOGER = "astrologer"
    ADMIN = "admin"


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


@dataclass(frozen=True)
class Claims:
    user_id: str
    role: Role
    type: TokenType
    jti: str
    expires_at: float


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: datetime


class Tokens:
    def __init__(self, secret: str, access_ttl_s: float, refresh_ttl_s: float) -> None:
        self._secret = secret
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    def __repr__(self) -> str:
        return "Tokens(secret=***)"

    def issue(self, user_id: str, role: str, token_type: TokenType) -> IssuedToken:
        now = time.time()
        ttl = self.access_ttl_s if token_type is TokenType.ACCESS else self.refresh_ttl_s
        jti = str(uuid.uuid4())
        claims = {
            "sub": user_id,
            "role": role,
            "type": token_type.value,
            "iat": int(now),
            "exp": now + ttl,
            "jti": jti,
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return IssuedToken(token, jti, datetime.fromtimestamp(now + ttl, tz=timezone.utc))

    def decode(self, token: object, expected: TokenType) -> Claims:
        """Verifies signature, algorithm (HS256 only), expiry and type; raises InvalidToken."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise InvalidToken()
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["sub", "role", "type", "iat", "exp", "jti"]},
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        try:
            role = Role(claims["role"])
            token_type = TokenType(claims["type"])
            user_id = str(uuid.UUID(str(claims["sub"])))
        except (ValueError, TypeError):
            raise InvalidToken() from None
        if token_type is not expected:
            raise InvalidToken()
        return Claims(user_id, role, token_type, str(claims["jti"]), float(claims["exp"]))


class LoginThrottle:
    """Counts failed logins per email and per client address in Redis (SPEC §2)."""

    def __init__(self, redis: Redis, keys: Keys, fails_per_email: int) -> None:
        self.redis = redis
        self.keys = keys
        self.per_email = fails_per_email
        self.per_address = fails_per_email * ADDRESS_FAILS_FACTOR

    async def check(self, email: str, address: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.login_email(email))
        pipe.get(self.keys.login_address(address))
        by_email, by_address = await pipe.execute()
        if int(by_email or 0) >= self.per_email or int(by_address or 0) >= self.per_address:
            raise TooManyAttempts()

    async def failed(self, email: str, address: str) -> None:
        # Two keys in two slots: two small transactions, not one script.
        for key in (self.keys.login_email(email), self.keys.login_address(address)):
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(key, 0, ex=LOGIN_WINDOW_S, nx=True)  # the window starts at the first failure
            pipe.incr(key)
            await pipe.execute()

    async def succeeded(self, email: str) -> None:
        await self.redis.delete(self.keys.login_email(email))
