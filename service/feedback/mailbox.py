"""The bounce mailbox: read it, record what each message reports, then file the message.

`BOUNCE_MAILBOX_URL` names it: `imaps://user:pass@host:993/INBOX` (TLS from the start),
`imap://user:pass@host:143/INBOX` (STARTTLS; a server that does not offer it is refused
before the password is sent) or `pop3s://user:pass@host:995`. User name and password are
percent-encoded (`%40` for @); `?cafile=/path/ca.pem` trusts a private CA.

One poll reads the messages it has not seen (by UID; read with BODY.PEEK, so they stay
unread), records their reports (a batch of messages per transaction), and only after that
commit files them as `BOUNCE_MAILBOX_AFTER` says: `move:FOLDER` (the folder is created if
missing; IMAP MOVE, or COPY + \\Deleted + EXPUNGE where MOVE is missing) or `delete`. A
crash between the commit and the filing is harmless: the next poll reads the message
again, every report is a duplicate (service.feedback.outcomes keys them), and it is filed.

A message that is no bounce (an auto-reply) is filed the same way. A message we cannot
read stays where it is, unread, for a person; on IMAP it gets the keyword
`NewsletterUnparseable`, which later polls skip, so it is counted once (a server that
keeps no keywords has it re-read at every poll, counted once per process). A message whose
report the database refuses (a value it cannot store) is left in place the same way, so
one such message never holds up the others.

POP3 has one folder and no flags. There, `move:` means the same as `delete`: the message
is deleted from the server once its reports are committed (its text stays in the event's
payload for FEEDBACK_PAYLOAD_DAYS). POP3 deletes at QUIT, so a poll cut short deletes
nothing and the next one reads those messages again (duplicates, harmless). A message we
cannot read is left on the server and remembered by its UIDL for the life of the process.
"""

from __future__ import annotations

import imaplib
import logging
import poplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.exc import DataError, IntegrityError

from ..db import Database
from .mailbox_sessions import (
    UNPARSEABLE_KEYWORD,
    FetchedMessage,
    ImapSession,
    MailboxError,
    Pop3Session,
)
from .outcomes import Feedback, Outcome
from .reports import Unparseable, parse

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995}


@dataclass(frozen=True)
class MailboxAddress:
    """Where the bounce mailbox is, from BOUNCE_MAILBOX_URL."""

    scheme: str
    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"
    cafile: str | None = None

    @classmethod
    def from_url(cls, url: str) -> MailboxAddress:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(
                f"BOUNCE_MAILBOX_URL must start with imaps://, imap:// or pop3s:// (not {scheme!r})"
            )
        if not parts.hostname or not parts.username or parts.password is None:
            raise ValueError(
                "BOUNCE_MAILBOX_URL must name a user, password and host: "
                "imaps://USER:PASSWORD@HOST:993/INBOX"
            )
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise ValueError(f"BOUNCE_MAILBOX_URL: {exc}") from None
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        if scheme == "pop3s" and folder != "INBOX":
            raise ValueError("BOUNCE_MAILBOX_URL: a POP3 mailbox has no folders")
        _check_folder_name(folder)
        cafile = parse_qs(parts.query).get("cafile", [None])[0]
        return cls(
            scheme, parts.hostname, port, unquote(parts.username), unquote(parts.password),
            folder, cafile,
        )  # fmt: skip

    def __str__(self) -> str:
        """The address without its password, for logs."""
        path = "" if self.scheme == "pop3s" else f"/{self.folder}"
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}{path}"


@dataclass(frozen=True)
class AfterHandling:
    """What becomes of a handled message, from BOUNCE_MAILBOX_AFTER."""

    folder: str | None  # move here; None: delete

    @classmethod
    def from_setting(cls, text: str) -> AfterHandling:
        text = text.strip()
        if text.lower() == "delete":
            return cls(None)
        if text.lower().startswith("move:") and text[5:].strip():
            folder = text[5:].strip()
            _check_folder_name(folder)
            return cls(folder)
        raise ValueError(f"BOUNCE_MAILBOX_AFTER must be move:FOLDER or delete, not {text!r}")


def _check_folder_name(name: str) -> None:
    # Non-ASCII names need IMAP's modified UTF-7; no one needs one for this folder.
    if not name.isascii() or any(c in name for c in "\r\n\0"):
        raise ValueError(f"mailbox folder names must be plain ASCII (not {name!r})")


@dataclass
class PollReport:
    """What one poll did."""

    read: int = 0  # messages read this poll
    recorded: int = 0  # reports that changed something or were written down
    duplicates: int = 0  # reports heard before (a message read again)
    not_bounces: int = 0  # auto-replies, delay notices
    unparseable: int = 0  # newly found messages we cannot read, left in place
    filed: int = 0  # messages moved or deleted

    def __str__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in vars(self).items())


@dataclass
class BounceMailbox:
    """One bounce mailbox, polled again and again by one process."""

    address: MailboxAddress
    after: AfterHandling
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 30.0
    # Messages we could not read, by ident: counted once per process where the server
    # cannot remember it for us (POP3, IMAP without keywords).
    _known_unparseable: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_settings(
        cls, url: str, after: str, *, ssl_context: ssl.SSLContext | None = None
    ) -> BounceMailbox:
        address, handling = MailboxAddress.from_url(url), AfterHandling.from_setting(after)
        if address.scheme != "pop3s" and handling.folder == address.folder:
            raise ValueError(
                f"BOUNCE_MAILBOX_AFTER moves messages into the folder that is read ({after!r})"
            )
        return cls(address, handling, ssl_context)

    def tls(self) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return self.ssl_context
        return ssl.create_default_context(cafile=self.address.cafile)

    def poll(self, database: Database, feedback: Feedback, *, now: datetime) -> PollReport:
        """Read the new messages, record their reports, file them; raises MailboxError."""
        report = PollReport()
        session_type = Pop3Session if self.address.scheme == "pop3s" else ImapSession
        try:
            with session_type(self) as server:
                for batch in server.batches(self._known_unparseable):
                    readable = []
                    for message in batch:
                        if self._read(message, report):
                            readable.append(message)
                        else:
                            server.set_aside(message)
                    for message in self._record(readable, database, feedback, report, now=now):
                        server.set_aside(message)
                        readable.remove(message)
                    if readable:
                        # Only now that their reports are committed.
                        server.file([message.key for message in readable])
                        report.filed += len(readable)
        except (OSError, imaplib.IMAP4.error, poplib.error_proto, EOFError) as exc:
            raise MailboxError(f"bounce mailbox {self.address}: {_describe(exc)}") from exc
        return report

    def _read(self, message: FetchedMessage, report: PollReport) -> bool:
        """Parse one message into message.reports; False if it cannot be read."""
        report.read += 1
        try:
            message.reports = parse(message.raw)
        except Unparseable as exc:
            self._left_in_place(message, report, str(exc))
            return False
        if not message.reports:
            report.not_bounces += 1
        return True

    def _left_in_place(self, message: FetchedMessage, report: PollReport, why: str) -> None:
        if message.ident not in self._known_unparseable:
            report.unparseable += 1
            logger.warning(
                "bounce mailbox %s: message %s left in place: %s", self.address, message.key, why
            )
        self._known_unparseable.add(message.ident)

    def _record(
        self,
        messages: list[FetchedMessage],
        database: Database,
        feedback: Feedback,
        report: PollReport,
        *,
        now: datetime,
    ) -> list[FetchedMessage]:
        """Record the messages' reports, a batch in one transaction (a commit costs more
        than the recording); returns those the database refused, to be left in place."""
        try:
            self._record_together(messages, database, feedback, report, now=now)
            return []
        except (IntegrityError, DataError):
            pass  # one message's fault, most likely: find it, and keep the rest
        refused = []
        for message in messages:
            try:
                self._record_together([message], database, feedback, report, now=now)
            except (IntegrityError, DataError) as exc:
                self._left_in_place(message, report, f"the database refused it: {exc.orig}")
                refused.append(message)
        return refused

    @staticmethod
    def _record_together(
        messages: list[FetchedMessage],
        database: Database,
        feedback: Feedback,
        report: PollReport,
        *,
        now: datetime,
    ) -> None:
        reports = [r for message in messages for r in message.reports]
        if not reports:
            return
        with database.begin() as session:
            outcomes = [feedback.record(session, r, now=now).outcome for r in reports]
        duplicates = sum(1 for outcome in outcomes if outcome is Outcome.DUPLICATE)
        report.duplicates += duplicates
        report.recorded += len(outcomes) - duplicates


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, and is the port right?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    text = str(exc)
    if isinstance(exc, imaplib.IMAP4.error | poplib.error_proto):
        text = text.removeprefix("b'").removeprefix('b"').rstrip("'\"")
        return f"the server said: {text}"
    return text or type(exc).__name__


__all__ = [
    "UNPARSEABLE_KEYWORD",
    "AfterHandling",
    "BounceMailbox",
    "MailboxAddress",
    "MailboxError",
    "PollReport",
]
