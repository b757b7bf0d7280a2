"""Errors raised by the client: one class per REST status the API documents."""

from __future__ import annotations

from typing import Dict, Optional, Type


class CairnError(Exception):
    """A request cairn refused or could not answer.

    ``status`` is the HTTP status (0 when the server could not be reached),
    ``code`` the API's snake_case error code and ``message`` its text.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class Unauthorized(CairnError):
    """401: no token, or a token the server does not know."""


class Forbidden(CairnError):
    """403: the token's namespace may not do this."""


class NotFound(CairnError):
    """404: no such volume, snapshot or route."""


class Conflict(CairnError):
    """409: the name exists, or the volume is in the wrong state."""


class PreconditionFailed(CairnError):
    """412: the snapshot does not carry the required labels."""


class Unavailable(CairnError):
    """503: the object store is unreachable and nothing is cached."""


_BY_STATUS: Dict[int, Type[CairnError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    503: Unavailable,
}


def error_for(status: int, code: Optional[str], message: Optional[str]) -> CairnError:
    """The exception for an error answer."""
    cls = _BY_STATUS.get(status, CairnError)
    return cls(status, code or "http_error", message or f"HTTP {status}")
