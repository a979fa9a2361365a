"""Delivery: a Message, and the SMTP, file and console backends that deliver it.

This package imports only the standard library and knows nothing of subscribers or
the outbox: it turns a Message into bytes on a wire (or a file) and says how that went.
Each backend has `send(message)` and `close()`; the dispatcher, which uses them, states
that contract (service.delivery.Mailer).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from .errors import (
    INTERNATIONAL_ADDRESSES_REFUSED,
    AddressNotSupported,
    DeliveryError,
    MailerUnavailable,
    MessageRejected,
    RecipientRejected,
    ServerBusy,
    TemporaryFailure,
)
from .message import HeaderInjection, Message

__all__ = [
    "INTERNATIONAL_ADDRESSES_REFUSED",
    "AddressNotSupported",
    "DeliveryError",
    "HeaderInjection",
    "MailerUnavailable",
    "Message",
    "MessageRejected",
    "RecipientRejected",
    "ServerBusy",
    "TemporaryFailure",
    "mailer_from_url",
]


def mailer_from_url(url: str, *, timeout: float = 30.0):
    """A mailer for MAIL_URL: smtp://, smtps://, file:///dir or console:.

    Without `?tls=`, smtps:// and port 465 use TLS from the start, and a URL with a user
    name or port 587 uses STARTTLS, so credentials never cross the network in the clear
    unless `?tls=none` says so.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("smtp", "smtps"):
        from .smtp import SMTPMailer

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        tls = query.get("tls", "").lower() or smtp_tls_default(scheme, parts.port, parts.username)
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


def smtp_tls_default(scheme: str, port: int | None, username: str | None) -> str:
    """The TLS mode a MAIL_URL gets when it does not name one."""
    if scheme == "smtps" or port == 465:
        return "ssl"
    if username or port == 587:
        return "starttls"
    return "none"
