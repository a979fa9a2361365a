"""How delivery can fail, in the terms the sender acts on."""

from __future__ import annotations


class DeliveryError(Exception):
    """A message was not delivered. `code` is the SMTP reply code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError):
    """Try this message again later: a 4xx for this recipient, or the connection failed
    while this message was in flight."""


class ServerBusy(DeliveryError):
    """The server turns everyone away for now (421, or a 4xx to our MAIL FROM): nothing is
    wrong with this message or its recipient. Stop, keep the mail queued, try later."""


class RecipientRejected(DeliveryError):
    """The address does not exist (5.1.x and the like): it bounced; stop mailing it."""


class MessageRejected(DeliveryError):
    """The server refused this message for good, for a reason other than the address
    (policy, content, size): this message failed; the subscriber is left alone."""


# Why an email to an international address failed, as the outbox row and the reader's
# history say it (and the dashboard counts it by).
INTERNATIONAL_ADDRESSES_REFUSED = "the mail server does not accept international addresses"


class AddressNotSupported(MessageRejected):
    """The server cannot take this recipient's address at all: an international local part
    (zoë@...) and a server without SMTPUTF8. This email failed; the address may be fine, and
    another server would deliver it."""


class MailerUnavailable(DeliveryError):
    """Nothing can be sent until the operator acts (no connection, bad credentials, our
    sender or relaying refused). Keep the mail queued, stop the pass, say so loudly."""
