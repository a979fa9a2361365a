"""SMTP delivery over one persistent connection, with every failure classified.

The classification decides what happens to a message:
- 4xx for a recipient, timeouts and dropped connections: TemporaryFailure (retry it later);
- 421 anywhere, or 4xx to MAIL FROM: ServerBusy (stop; the whole queue waits, no attempt
  is counted, since the server said no to everyone);
- 5xx whose enhanced status says the address is bad (5.1.x, 5.2.1), or a plain 550/551/553
  at RCPT: RecipientRejected (the address bounced);
- 5.7.x replies about relaying or authentication, our MAIL FROM refused, no connection,
  failed login: MailerUnavailable (our configuration; stop and tell the operator);
- any other 5xx: MessageRejected (this message failed; the subscriber is left alone);
- an international address (a non-ASCII local part) and a server without SMTPUTF8:
  AddressNotSupported, a MessageRejected found before anything is sent.

A reply that never comes after DATA is a TemporaryFailure too: the server may have
accepted the message, so the retry can deliver it twice. Like a crash between the
server's acceptance and the database commit, that window holds only the one message.
"""

from __future__ import annotations

import contextlib
import functools
import re
import smtplib
import ssl

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
from .message import Message, Prepared

MESSAGE_TOO_BIG = 552
SERVICE_CLOSING = 421
# Replies that say the address itself is bad, when the server gives no enhanced status.
BAD_MAILBOX_CODES = frozenset({550, 551, 553})
ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
OUR_FAULT_WORDS = ("relay", "authenticat", "not permitted to send", "sender")
# A bare addr-spec, as email-validator leaves it: nothing to quote or parse.
PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"]+@[^\s<>()\[\]\\,;:\"]+")


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:500]


def _angle_address(address: str) -> str:
    """`<address>` for the envelope. smtplib.quoteaddr parses every address it is given,
    which costs more than the rest of the envelope; a plain one needs no parsing."""
    if PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _dot_stuffed(data: bytes) -> bytes:
    """The message with lines starting with '.' doubled (RFC 5321 4.5.2); most have none,
    and looking costs a tenth of rewriting."""
    if data.startswith(b".") or b"\n." in data:
        return smtplib._quote_periods(data)
    return data


def _send_pipelined(
    connection: smtplib.SMTP, sender: str, recipient: str, message: Prepared, options: list[str]
) -> None:
    """One transaction with RFC 2920 PIPELINING: MAIL, RCPT and DATA go in one write and
    their replies are read in order, so an email costs two round trips instead of four.

    Failures raise the same smtplib exceptions as SMTP.sendmail, and leave the connection
    ready for the next email (or closed, after a 421), as sendmail does.
    """
    if any(option.upper() == "SMTPUTF8" for option in options):
        connection.command_encoding = "utf-8"  # SMTPMailer.send saw the server takes it
    if connection.does_esmtp and connection.has_extn("size"):
        options = [*options, f"SIZE={message.size}"]
    mail = f"MAIL FROM:{_angle_address(sender)}" + "".join(f" {o}" for o in options)
    connection.send(f"{mail}\r\nRCPT TO:{_angle_address(recipient)}\r\nDATA\r\n")
    replies: list[tuple[int, bytes]] = []
    for _ in range(3):
        try:
            replies.append(connection.getreply())
        except smtplib.SMTPServerDisconnected:
            # Servers hang up after a 421 (Postfix does, at once): that is the answer.
            if replies and replies[0][0] == SERVICE_CLOSING:
                raise smtplib.SMTPSenderRefused(*replies[0], sender) from None
            raise
    (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
    if any(code == SERVICE_CLOSING for code, _ in replies):
        connection.close()
    if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
        # The server expects a message we must not send: end it at once, empty.
        connection.send(b".\r\n")
        connection.getreply()
    if mail_code != 250:
        _reset(connection, mail_code)
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if rcpt_code not in (250, 251):
        _reset(connection, rcpt_code)
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    if data_code != 354:
        _reset(connection, data_code)
        raise smtplib.SMTPDataError(data_code, data_reply)
    body = _dot_stuffed(message.data())
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    connection.send(body + b".\r\n")
    code, reply = connection.getreply()
    if code != 250:
        if code == SERVICE_CLOSING:
            connection.close()
        else:
            _reset(connection, code)
        raise smtplib.SMTPDataError(code, reply)


def _reset(connection: smtplib.SMTP, code: int) -> None:
    if code == SERVICE_CLOSING or connection.sock is None:
        connection.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        connection.rset()


@functools.cache
def tls_context(cafile: str | None) -> ssl.SSLContext:
    """The TLS settings for SMTP servers, made once per process: loading the system's
    certificates takes 20-60 ms, which every pass that sent anything paid (and a pass
    that sends a confirmation the moment it is queued should not)."""
    return ssl.create_default_context(cafile=cafile)


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
        connection: smtplib.SMTP | None = None
        try:
            if self.tls == "ssl":
                connection = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    self.local_hostname,
                    timeout=self.timeout,
                    context=tls_context(self.cafile),
                )
            else:
                connection = smtplib.SMTP(
                    self.host, self.port, self.local_hostname, timeout=self.timeout
                )
            connection.ehlo()
            if self.tls == "starttls":
                connection.starttls(context=tls_context(self.cafile))
                connection.ehlo()
            if self.username:
                connection.login(self.username, self.password or "")
        except smtplib.SMTPConnectError as exc:
            self._discard(connection)
            error = ServerBusy if exc.smtp_code == SERVICE_CLOSING else MailerUnavailable
            raise error(
                f"{where} turned the connection away: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
                exc.smtp_code,
            ) from exc
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
        if options and not connection.has_extn("smtputf8"):
            # Refused before any command (smtplib checks only after EHLO, and a HELO-only
            # server would be left in the middle of a transaction).
            raise AddressNotSupported(
                f"{INTERNATIONAL_ADDRESSES_REFUSED} (no SMTPUTF8): {recipient}"
            )
        try:
            if connection.has_extn("pipelining"):
                _send_pipelined(
                    connection, message.envelope_from, recipient, message.prepare(), options
                )
            else:
                connection.sendmail(
                    message.envelope_from,
                    [recipient],
                    message.prepare().data(),
                    mail_options=options,
                )
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(recipient, (0, b""))
            raise self._classify(code, reply, at="RCPT") from exc
        except smtplib.SMTPSenderRefused as exc:
            code, reply = exc.smtp_code, _reply_text(exc.smtp_error)
            if code == MESSAGE_TOO_BIG:
                raise MessageRejected(f"{code} {reply} (at MAIL)", code) from exc
            if code >= 500:
                raise MailerUnavailable(
                    f"the server refuses the sender {message.envelope_from}: {code} {reply}", code
                ) from exc
            raise ServerBusy(f"{code} {reply} (at MAIL)", code) from exc
        except smtplib.SMTPDataError as exc:
            raise self._classify(exc.smtp_code, exc.smtp_error, at="DATA") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnects, timeouts, garbled replies: the connection's state is unknown.
            self._drop()
            raise TemporaryFailure(
                f"connection to {self.host}:{self.port} failed: {exc!r}"
            ) from exc
        finally:
            if connection.sock is None:  # smtplib closed it (421, or a failed RSET)
                self._connection = None

    def _classify(self, code: int, reply: bytes | str, *, at: str) -> DeliveryError:
        text = _reply_text(reply)
        described = f"{code} {text} (at {at})"
        if code == SERVICE_CLOSING:
            return ServerBusy(described, code)
        if code < 500:
            return TemporaryFailure(described, code)
        enhanced = ENHANCED_STATUS.match(text)
        if enhanced is not None:
            subject, detail = int(enhanced.group(2)), int(enhanced.group(3))
            if subject == 1 or (subject, detail) == (2, 1):
                return RecipientRejected(described, code)
            if subject == 7 and any(word in text.lower() for word in OUR_FAULT_WORDS):
                return MailerUnavailable(f"the server refuses to relay for us: {described}", code)
            return MessageRejected(described, code)
        if at == "RCPT" and code in BAD_MAILBOX_CODES:
            return RecipientRejected(described, code)
        return MessageRejected(described, code)

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
