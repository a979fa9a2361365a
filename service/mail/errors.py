"""How delivery can fail, in the terms the sender acts on."""

from __future__ import annotations


class DeliveryError(Exception):
    """A message was not delivered. `code` is the SMTP reply code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError):
    """Try this message again later: 4xx replies, timeouts, a dropped connection."""


class RecipientRejected(DeliveryError):
    """The server refused the address for good (5xx): it bounced; stop mailing it."""


class MessageRejected(DeliveryError):
    """The server refused this message for good (5xx at DATA), not the address."""


class MailerUnavailable(DeliveryError):
    """Nothing can be sent now (no connection, bad credentials, sender refused).

    The message is not at fault: keep it queued, stop the pass, tell the operator.
    """
