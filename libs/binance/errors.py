"""What a venue call can end in, besides an answer.

The three outcomes matter for order safety (SPEC FM-N7): `VenueError` is a definite answer,
`VenueUnreachable` means the request surely never reached the venue (safe to resend),
`VenueTimeout` means it may or may not have been executed (query before any resend).
"""

from __future__ import annotations


class VenueError(Exception):
    """A definite answer from the venue: HTTP 4xx/5xx, with or without a Binance error body.

    Attributes:
        status: HTTP status code.
        code: Binance error code (e.g. -2011) when the body carried one.
        msg: Binance error message, or the (truncated) raw body.
        retry_after_s: the `Retry-After` header in seconds, when present (429/418/503).
    """

    def __init__(self, status: int, code: int | None, msg: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status} code={code} msg={msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.retry_after_s = retry_after_s


class VenueUnreachable(Exception):
    """The connection could not be established (refused, DNS, reset on connect): nothing was sent."""


class VenueTimeout(Exception):
    """The request was (or may have been) sent but no complete answer came: outcome AMBIGUOUS."""
