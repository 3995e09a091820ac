"""Every error a client can see, each with a stable code (SPEC §3, §4).

Clients match `code`, never the message. `status` is the HTTP status when the
error answers an HTTP call; on a socket the same error becomes an `error` frame.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes of SPEC §4."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008  # forbidden Origin, or still over the rate limit
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013  # this socket's send queue overflowed (it stopped reading)
    BAD_TOKEN = 4401
    ACCOUNT_GONE = 4403
    AUTH_TIMEOUT = 4408


class AstroqError(Exception):
    code = "internal"
    status = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(AstroqError):
    code, status, default_message = "invalid_input", 422, "invalid input"


class BadJson(AstroqError):
    code, status, default_message = "bad_json", 400, "the body is not valid JSON"


class UnknownType(AstroqError):
    code, status, default_message = "unknown_type", 400, "unknown frame type"


class EmailTaken(AstroqError):
    code, status, default_message = "email_taken", 409, "that email is already registered"


class InvalidCredentials(AstroqError):
    code, status, default_message = "invalid_credentials", 401, "wrong email or password"


class InvalidToken(AstroqError):
    code, status, default_message = "invalid_token", 401, "the token is invalid or expired"


class Unauthorized(AstroqError):
    code, status, default_message = "unauthorized", 401, "authentication required"


class Forbidden(AstroqError):
    code, status, default_message = "forbidden", 403, "not allowed for this role"


class NotFound(AstroqError):
    code, status, default_message = "not_found", 404, "not found"


class MethodNotAllowed(AstroqError):
    code, status, default_message = "method_not_allowed", 405, "that method is not allowed here"


class TooManyAttempts(AstroqError):
    code, status, default_message = "too_many_attempts", 429, "too many failed logins; try later"


class RateLimited(AstroqError):
    code, status, default_message = "rate_limited", 429, "too many frames; slow down"


class PayloadTooLarge(AstroqError):
    code, status, default_message = "payload_too_large", 413, "the body is too large"


class AlreadyOpen(AstroqError):
    code, status, default_message = (
        "already_open",
        409,
        "you already have an open request or session",
    )


class AstrologerOffline(AstroqError):
    code, status, default_message = "astrologer_offline", 409, "that astrologer is offline"


class OfferExpired(AstroqError):
    code, status, default_message = "offer_expired", 409, "the offer is no longer open"


class AlreadyEnded(AstroqError):
    code, status, default_message = "already_ended", 409, "the session has already ended"


class Unavailable(AstroqError):
    code, status, default_message = "unavailable", 503, "the service is briefly unavailable; retry"


BY_CODE: dict[str, type[AstroqError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        BadJson,
        UnknownType,
        EmailTaken,
        InvalidCredentials,
        InvalidToken,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        TooManyAttempts,
        RateLimited,
        PayloadTooLarge,
        AlreadyOpen,
        AstrologerOffline,
        OfferExpired,
        AlreadyEnded,
        Unavailable,
    )
}


def from_code(code: str, message: str | None = None) -> AstroqError:
    """Turns a code returned by a Lua script into its typed error."""
    return BY_CODE.get(code, AstroqError)(message)
