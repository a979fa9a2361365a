"""One connection to the bounce mailbox's server, IMAP or POP3, for one poll: the new
messages in batches, setting aside one we cannot read, filing those handled.

IMAP reads with BODY.PEEK (messages stay unread), marks an unreadable one with the keyword
UNPARSEABLE_KEYWORD where the server keeps keywords, and files with MOVE, or COPY +
\\Deleted + EXPUNGE. POP3 deletes what it files, at QUIT only. service.feedback.mailbox
decides what to do with each message.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .outcomes import Report

if TYPE_CHECKING:
    from .mailbox import BounceMailbox

UNPARSEABLE_KEYWORD = "NewsletterUnparseable"
# Messages fetched with one command, recorded in one transaction, filed with one command.
FETCH_BATCH = 100


class MailboxError(Exception):
    """The mailbox could not be read; the message says why, in one line."""


@dataclass(eq=False)
class FetchedMessage:
    """A message as fetched, and the reports read from it."""

    key: str  # the IMAP UID or POP3 message number
    ident: str  # stable across polls: UIDVALIDITY/UID or the UIDL
    raw: bytes
    reports: list[Report] = field(default_factory=list)


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapSession:
    """An IMAP connection (imaps, or imap with STARTTLS) with the folder selected."""

    def __init__(self, mailbox: BounceMailbox) -> None:
        self.mailbox = mailbox
        self.address = mailbox.address
        self.client: imaplib.IMAP4 | None = None
        self.capabilities: set[str] = set()
        self.keywords = False
        self.uidvalidity = ""
        self.folder_ready = False

    def __enter__(self) -> ImapSession:
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

    def batches(self, known: set[str]) -> Iterator[list[FetchedMessage]]:
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
                    messages.append(FetchedMessage(uid, f"{self.uidvalidity}/{uid}", item[1]))
            yield messages

    def set_aside(self, message: FetchedMessage) -> None:
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


class Pop3Session:
    """A POP3 connection over TLS."""

    def __init__(self, mailbox: BounceMailbox) -> None:
        self.mailbox = mailbox
        self.client: poplib.POP3_SSL | None = None

    def __enter__(self) -> Pop3Session:
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

    def batches(self, known: set[str]) -> Iterator[list[FetchedMessage]]:
        _, listing, _ = self.client.uidl()
        numbered = [line.decode().split(None, 1) for line in listing]
        batch = []
        for number, uidl in numbered:
            if uidl in known:
                continue
            _, lines, _ = self.client.retr(number)
            batch.append(FetchedMessage(number, uidl, b"\r\n".join(lines) + b"\r\n"))
            if len(batch) == FETCH_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def set_aside(self, message: FetchedMessage) -> None:
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
