"""Use-case errors, mapped to problem+json by the HTTP entrypoint."""


class UseCaseError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, **extra: object):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra  # more problem+json members (e.g. the Dockerfile line)


class NotFound(UseCaseError):
    status, code = 404, "not_found"


class Conflict(UseCaseError):
    status, code = 409, "conflict"


class Unprocessable(UseCaseError):
    status, code = 422, "unprocessable"


class TooLarge(UseCaseError):
    status, code = 413, "too_large"


class TooMany(UseCaseError):
    status, code = 429, "quota_exceeded"

    def __init__(self, detail: str, retry_after_s: int):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class IdempotencyMismatch(UseCaseError):
    status, code = 422, "idempotency_key_reused"


class OutOfOrder(Exception):
    """A fact arrived before the fact that causes it; try again shortly."""
