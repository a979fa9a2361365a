"""SMTP delivery over one persistent connection, with every failure classified.

The classification decides what happens to a message:
- 4xx replies, timeouts and dropped connections: TemporaryFailure (retry later);
- 5xx at RCPT, or 5.1.x (bad address) at DATA: RecipientRejected (the address bounced);
- other 5xx at DATA, or the server lacking SMTPUTF8: MessageRejected (this message failed);
- no connection, failed authentication, our sender refused: MailerUnavailable (stop, keep
  the message, tell the operator: none of that is the recipient's fault).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl

from .errors import (
    MailerUnavailable,
    MessageRejected,
    RecipientRejected,
    TemporaryFailure,
)
from .message import Message

MESSAGE_TOO_BIG = 552


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:500]


class SMTPMailer:
    """Sends through one SMTP server, connecting on first use and again after a drop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: str = "none",
        timeout: float = 30.0,
        cafile: str | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls = tls
        self.timeout = timeout
        self.cafile = cafile
        self.local_hostname = local_hostname
        self._connection: smtplib.SMTP | None = None

    def __repr__(self) -> str:
        return f"<SMTPMailer {self.host}:{self.port} tls={self.tls}>"

    def _connect(self) -> smtplib.SMTP:
        where = f"{self.host}:{self.port}"
        context = ssl.create_default_context(cafile=self.cafile)
        connection: smtplib.SMTP | None = None
        try:
            if self.tls == "ssl":
                connection = smtplib.SMTP_SSL(
                    self.host, self.port, self.local_hostname, timeout=self.timeout, context=context
                )
            else:
                connection = smtplib.SMTP(
                    self.host, self.port, self.local_hostname, timeout=self.timeout
                )
            connection.ehlo()
            if self.tls == "starttls":
                connection.starttls(context=context)
                connection.ehlo()
            if self.username:
                connection.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._discard(connection)
            raise MailerUnavailable(
                f"SMTP authentication failed at {where}: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
                exc.smtp_code,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._discard(connection)
            raise MailerUnavailable(f"cannot open an SMTP session with {where}: {exc!r}") from exc
        return connection

    @staticmethod
    def _discard(connection: smtplib.SMTP | None) -> None:
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    def send(self, message: Message) -> None:
        """Deliver one message; raise a DeliveryError subclass if it did not go."""
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        recipient = message.envelope_to
        options = ["SMTPUTF8"] if message.needs_smtputf8 else []
        try:
            connection.sendmail(
                message.envelope_from, [recipient], message.as_bytes(), mail_options=options
            )
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(recipient, (0, b""))
            raise self._classify(code, reply, at="RCPT") from exc
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code >= 500 and exc.smtp_code != MESSAGE_TOO_BIG:
                raise MailerUnavailable(
                    f"the server refuses the sender {message.envelope_from}: "
                    f"{exc.smtp_code} {_reply_text(exc.smtp_error)}",
                    exc.smtp_code,
                ) from exc
            raise self._classify(exc.smtp_code, exc.smtp_error, at="MAIL") from exc
        except smtplib.SMTPDataError as exc:
            raise self._classify(exc.smtp_code, exc.smtp_error, at="DATA") from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise MessageRejected(f"the server does not support SMTPUTF8 for {recipient}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnects, timeouts, garbled replies: the connection's state is unknown.
            self._drop()
            raise TemporaryFailure(
                f"connection to {self.host}:{self.port} failed: {exc!r}"
            ) from exc
        finally:
            if connection.sock is None:  # smtplib closed it (421, or a failed RSET)
                self._connection = None

    def _classify(
        self, code: int, reply: bytes | str, *, at: str
    ) -> TemporaryFailure | RecipientRejected | MessageRejected:
        text = f"{code} {_reply_text(reply)} (at {at})"
        if code < 500:
            return TemporaryFailure(text, code)
        if at == "RCPT" or (at == "DATA" and _reply_text(reply).startswith("5.1.")):
            return RecipientRejected(text, code)
        return MessageRejected(text, code)

    def _drop(self) -> None:
        self._discard(self._connection)
        self._connection = None

    def close(self) -> None:
        """End the session politely; never raises."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            self._discard(connection)
