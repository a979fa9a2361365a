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
import re
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.exc import DataError, IntegrityError

from ..db import Database
from .outcomes import Feedback, Outcome, Report
from .reports import Unparseable, parse

logger = logging.getLogger(__name__)

UNPARSEABLE_KEYWORD = "NewsletterUnparseable"
# Messages fetched with one command, recorded in one transaction, filed with one command.
FETCH_BATCH = 100
DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995}


class MailboxError(Exception):
    """The mailbox could not be read; the message says why, in one line."""


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


@dataclass(eq=False)
class _Message:
    key: str  # the IMAP UID or POP3 message number
    ident: str  # stable across polls: UIDVALIDITY/UID or the UIDL
    raw: bytes
    reports: list[Report] = field(default_factory=list)


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
        session_type = _Pop3Session if self.address.scheme == "pop3s" else _ImapSession
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

    def _read(self, message: _Message, report: PollReport) -> bool:
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

    def _left_in_place(self, message: _Message, report: PollReport, why: str) -> None:
        if message.ident not in self._known_unparseable:
            report.unparseable += 1
            logger.warning(
                "bounce mailbox %s: message %s left in place: %s", self.address, message.key, why
            )
        self._known_unparseable.add(message.ident)

    def _record(
        self,
        messages: list[_Message],
        database: Database,
        feedback: Feedback,
        report: PollReport,
        *,
        now: datetime,
    ) -> list[_Message]:
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
        messages: list[_Message],
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


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _ImapSession:
    def __init__(self, mailbox: BounceMailbox) -> None:
        self.mailbox = mailbox
        self.address = mailbox.address
        self.client: imaplib.IMAP4 | None = None
        self.capabilities: set[str] = set()
        self.keywords = False
        self.uidvalidity = ""
        self.folder_ready = False

    def __enter__(self) -> _ImapSession:
        try:
            self._open()
        except BaseException:
            self.__exit__(*sys.exc_info())  # no socket left open by a refused login
            raise
        return self

    def _open(self) -> None:
        a = self.address
        if a.scheme == "imaps":
            self.client = client = imaplib.IMAP4_SSL(
                a.host, a.port, ssl_context=self.mailbox.tls(), timeout=self.mailbox.timeout
            )
        else:
            self.client = client = imaplib.IMAP4(a.host, a.port, timeout=self.mailbox.timeout)
            if "STARTTLS" not in client.capabilities:
                raise MailboxError(
                    f"bounce mailbox {a}: the server offers no STARTTLS; refusing to send "
                    "the password unencrypted (use imaps://)"
                )
            client.starttls(ssl_context=self.mailbox.tls())
        _ok(client.login(a.user, a.password))
        # After the login a server may offer more (MOVE, UIDPLUS).
        _, data = client.capability()
        self.capabilities = {c.upper() for c in data[0].decode().split()}
        _ok(client.select(_quote(a.folder)))
        flags = client.response("PERMANENTFLAGS")[1]
        self.keywords = bool(flags and flags[0] and b"\\*" in flags[0])
        self.uidvalidity = (client.response("UIDVALIDITY")[1] or [b""])[0].decode()

    def __exit__(self, *exc: object) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if exc[0] is None:
                # LOGOUT without CLOSE: CLOSE would expunge whatever else is marked deleted.
                client.logout()
            else:
                client.shutdown()
        except (OSError, imaplib.IMAP4.error):
            pass  # the connection is going anyway

    def batches(self, known: set[str]) -> Iterator[list[_Message]]:
        criteria = ["UNDELETED"]
        if self.keywords:
            criteria += ["UNKEYWORD", UNPARSEABLE_KEYWORD]
        _, data = _ok(self.client.uid("SEARCH", *criteria))
        uids = [u.decode() for u in (data[0] or b"").split()]
        for start in range(0, len(uids), FETCH_BATCH):
            chunk = uids[start : start + FETCH_BATCH]
            _, fetched = _ok(self.client.uid("FETCH", ",".join(chunk), "(UID BODY.PEEK[])"))
            messages = []
            for item in fetched:
                if not isinstance(item, tuple):
                    continue
                match = re.search(rb"UID (\d+)", item[0])
                if match:
                    uid = match.group(1).decode()
                    messages.append(_Message(uid, f"{self.uidvalidity}/{uid}", item[1]))
            yield messages

    def set_aside(self, message: _Message) -> None:
        if self.keywords:
            _ok(self.client.uid("STORE", message.key, "+FLAGS.SILENT", f"({UNPARSEABLE_KEYWORD})"))

    def file(self, uids: list[str]) -> None:
        uid_set = ",".join(uids)
        folder = self.mailbox.after.folder
        if folder is not None:
            self._create(folder)
            if "MOVE" in self.capabilities:
                _ok(self.client.uid("MOVE", uid_set, _quote(folder)))
                return
            _ok(self.client.uid("COPY", uid_set, _quote(folder)))
        _ok(self.client.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"))
        if "UIDPLUS" in self.capabilities:
            _ok(self.client.uid("EXPUNGE", uid_set))
        else:
            # Also expunges any message someone else marked deleted in this folder.
            _ok(self.client.expunge())

    def _create(self, folder: str) -> None:
        if self.folder_ready:
            return
        _, listed = _ok(self.client.list('""', _quote(folder)))
        if not any(listed or []):
            _ok(self.client.create(_quote(folder)))
            self.client.subscribe(_quote(folder))
        self.folder_ready = True


class _Pop3Session:
    def __init__(self, mailbox: BounceMailbox) -> None:
        self.mailbox = mailbox
        self.client: poplib.POP3_SSL | None = None

    def __enter__(self) -> _Pop3Session:
        a = self.mailbox.address
        try:
            self.client = poplib.POP3_SSL(
                a.host, a.port, context=self.mailbox.tls(), timeout=self.mailbox.timeout
            )
            self.client.user(a.user)
            self.client.pass_(a.password)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if exc[0] is None:
                client.quit()  # deletions happen here, and only here
            else:
                client.close()
        except (OSError, poplib.error_proto):
            pass

    def batches(self, known: set[str]) -> Iterator[list[_Message]]:
        _, listing, _ = self.client.uidl()
        numbered = [line.decode().split(None, 1) for line in listing]
        batch = []
        for number, uidl in numbered:
            if uidl in known:
                continue
            _, lines, _ = self.client.retr(number)
            batch.append(_Message(number, uidl, b"\r\n".join(lines) + b"\r\n"))
            if len(batch) == FETCH_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def set_aside(self, message: _Message) -> None:
        """Nothing to mark on POP3: the message stays, remembered by its UIDL."""

    def file(self, numbers: list[str]) -> None:
        for number in numbers:
            self.client.dele(number)


def _ok(response: tuple[str, list]) -> tuple[str, list]:
    """An IMAP response, or IMAP4.error with the server's words when it is not OK."""
    typ, data = response
    if typ != "OK":
        words = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        raise imaplib.IMAP4.error(f"{typ} {words}".strip())
    return response
