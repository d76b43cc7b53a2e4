"""Domain errors. Every API maps them to ``{"error": {"type", "message"}}`` in one place."""

from __future__ import annotations


class ApplicationError(Exception):
    status = 400
    type = "invalid_request"
    retry_after: int | None = None  # seconds: sent as ``Retry-After`` when set

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if retry_after is not None:
            self.retry_after = retry_after


def error_body(type_: str, message: str) -> dict[str, dict[str, str]]:
    """The REST API's error (docs/INTERFACES.md §4): ``{"error": {"type", "message"}}``."""
    return {"error": {"type": type_, "message": message}}


class Unauthenticated(ApplicationError):
    """No usable API key: 401 (with ``WWW-Authenticate: Bearer``)."""

    status = 401
    type = "authentication_error"

    def __init__(self, message: str = "missing, invalid, expired or revoked API key"):
        super().__init__(message)


class BodyTooLarge(ApplicationError):
    """A request body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``: 413."""

    status = 413
    type = "request_too_large"

    def __init__(self, message: str = "request body exceeds the size limit"):
        super().__init__(message)


class NotFound(ApplicationError):
    status = 404
    type = "not_found"


class Conflict(ApplicationError):
    status = 409
    type = "conflict"


class ServiceUnavailable(ApplicationError):
    """A dependency every request needs did not answer: 503 with ``Retry-After``."""

    status = 503
    type = "unavailable"
    retry_after = 1


class ValidationFailed(ApplicationError):
    """Bad input; ``errors`` holds one ``path: message`` line per problem."""

    status = 422
    type = "validation_error"

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))
