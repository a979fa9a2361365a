"""Delivery: a Message, the Mailer protocol, and the SMTP, file and console backends.

This package imports only the standard library and knows nothing of subscribers or
the outbox: it turns a Message into bytes on a wire (or a file) and says how that went.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import (
    DeliveryError,
    MailerUnavailable,
    MessageRejected,
    RecipientRejected,
    TemporaryFailure,
)
from .message import HeaderInjection, Message

__all__ = [
    "DeliveryError",
    "HeaderInjection",
    "Mailer",
    "MailerUnavailable",
    "Message",
    "MessageRejected",
    "RecipientRejected",
    "TemporaryFailure",
    "mailer_from_url",
]


class Mailer(Protocol):
    """Delivers messages, keeping any connection open between calls until `close()`."""

    def send(self, message: Message) -> None:
        """Deliver one message, or raise a DeliveryError subclass saying what to do next."""

    def close(self) -> None:
        """Release the connection, if any."""


def mailer_from_url(url: str, *, timeout: float = 30.0) -> Mailer:
    """A mailer for MAIL_URL: smtp://, smtps://, file:///dir or console:."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("smtp", "smtps"):
        from .smtp import SMTPMailer

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        tls = query.get("tls", "ssl" if scheme == "smtps" else "none").lower()
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"MAIL_URL tls must be none, starttls or ssl, not {tls!r}")
        return SMTPMailer(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if tls == "ssl" else 587 if tls == "starttls" else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            timeout=float(query.get("timeout", timeout)),
            cafile=query.get("cafile"),
            local_hostname=query.get("helo"),
        )
    if scheme == "file":
        from .files import FileMailer

        return FileMailer(unquote(parts.netloc + parts.path))
    if scheme == "console":
        from .console import ConsoleMailer

        return ConsoleMailer()
    raise ValueError(f"MAIL_URL scheme must be smtp, smtps, file or console, not {scheme!r}")
