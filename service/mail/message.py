"""An email to deliver, and its MIME form (multipart/alternative: plain text and HTML).

The MIME bytes are built directly rather than through `email.message.EmailMessage`:
the structure is always the same two parts, and the standard library's policy machinery
costs far more than the encoding itself (bench/dispatch.py: 30 times). Bodies go as they
are when plain ASCII, else quoted-printable (binascii, in C); headers with non-ASCII text
use RFC 2047 encoded words. Tests parse the output back with the standard library to prove
it is well formed.

A Message may carry a signer (a DKIM signature, service.dkim) that puts header lines on top
of the finished bytes; `prepare()` makes them once (the SMTP SIZE and the data agree).
"""

from __future__ import annotations

import binascii
import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr

CRLF = "\r\n"
# Given a finished message, the header lines to put on top of it (service.dkim's signer).
Signer = Callable[[bytes], bytes]
MAX_LINE = 78  # RFC 5322's recommended limit for a header line
MAX_SMTP_LINE = 998  # RFC 5322's hard limit for any line


class HeaderInjection(ValueError):
    """A header value contains a line break; refusing it keeps headers from being forged."""


def _check_header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise HeaderInjection(f"{name} header contains a line break or NUL")
    return value


def _encode_text(name: str, value: str) -> str:
    """Header text as it goes on the wire, folded under 78 characters a line: ASCII as it
    is, anything else as encoded words."""
    _check_header_value(name, value)
    if value.isascii() and len(name) + 2 + len(value) <= MAX_LINE:
        return value  # the common case needs neither encoding nor folding
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=name).encode(linesep=CRLF)


def address_for_transport(address: str) -> tuple[str, bool]:
    """(address with an ASCII domain, whether the local part needs SMTPUTF8)."""
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}", not local.isascii()


@functools.lru_cache(maxsize=64)  # the same From and Reply-To on every email
def _encode_address(name: str, value: str) -> str:
    """An address header: display names are encoded, addresses are never touched."""
    _check_header_value(name, value)
    display, address = parseaddr(value)
    address, _ = address_for_transport(address) if "@" in address else (value, False)
    if not display:
        return address
    return formataddr((display, address), charset="utf-8")


@functools.lru_cache(maxsize=16)  # a pass stamps its emails with few distinct times
def _date_header(moment: datetime) -> str:
    return format_datetime(moment)


@functools.lru_cache(maxsize=64)
def _envelope_address(value: str) -> str:
    return address_for_transport(parseaddr(value)[1])[0]


def _body(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body): plain ASCII with lines SMTP accepts goes as it is
    (7bit); anything else as quoted-printable. Most emails are the former, which saves the
    encoding and keeps HTML readable on the wire (no `=3D` for every `=`)."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    if (
        normalized.isascii()
        and "\0" not in normalized
        and all(len(line) <= MAX_SMTP_LINE for line in normalized.split("\n"))
    ):
        return "7bit", normalized.replace("\n", CRLF)
    return "quoted-printable", _qp(normalized)


def _qp(text: str) -> str:
    # Encode with bare LF line ends (b2a_qp then uses LF for its soft breaks too), and
    # turn every line end into CRLF afterwards.
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalized.encode("utf-8"), quotetabs=False, istext=True)
    return encoded.decode("ascii").replace("\n", CRLF)


@dataclass(frozen=True)
class Message:
    """One email to one recipient."""

    sender: str  # 'Name <address>' or a bare address
    to: str  # a bare address; never carries a display name
    subject: str
    text: str
    html: str
    date: datetime
    message_id: str  # '<...@...>'
    reply_to: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # more headers, ASCII values
    # The SMTP envelope sender (MAIL FROM), where bounces go, when it is not the From
    # address: a VERP address that names this very email.
    return_path: str = ""
    # Given the finished message, returns header lines to put on top of it (a
    # DKIM-Signature): a signature must cover the bytes exactly as they go out.
    signer: Signer | None = None

    @property
    def envelope_from(self) -> str:
        if self.return_path:
            return address_for_transport(self.return_path)[0]
        return _envelope_address(self.sender)

    @property
    def envelope_to(self) -> str:
        return address_for_transport(self.to)[0]

    @property
    def needs_smtputf8(self) -> bool:
        return address_for_transport(self.to)[1]

    def as_bytes(self, boundary: str | None = None) -> bytes:
        """The message in MIME form, CRLF line endings, ready for SMTP DATA."""
        return self._prepared_with(boundary).data()

    def prepare(self) -> Prepared:
        """The message as it will be sent, signed, made once."""
        return self._prepared

    @functools.cached_property
    def _prepared(self) -> Prepared:
        return self._prepared_with(None)

    def _prepared_with(self, boundary: str | None) -> Prepared:
        data = self._mime(boundary)
        return Prepared(data, self.signer(data) if self.signer is not None else b"")

    def _mime(self, boundary: str | None) -> bytes:
        boundary = boundary or f"=_{secrets.token_hex(12)}"
        while boundary in self.text or boundary in self.html:  # 7bit bodies go unencoded
            boundary = f"=_{secrets.token_hex(12)}"
        to = self.to
        if not self.needs_smtputf8:
            to = self.envelope_to
        lines = [
            f"From: {_encode_address('From', self.sender)}",
            f"To: {_check_header_value('To', to)}",
            f"Subject: {_encode_text('Subject', self.subject)}",
            f"Date: {_date_header(self.date)}",
            f"Message-ID: {_check_header_value('Message-ID', self.message_id)}",
        ]
        if self.reply_to:
            lines.append(f"Reply-To: {_encode_address('Reply-To', self.reply_to)}")
        for name, value in self.headers.items():
            if not value.isascii():
                raise ValueError(f"{name} header must be ASCII")
            lines.append(f"{name}: {_check_header_value(name, value)}")
        lines += [
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
        ]
        for subtype, content in (("plain", self.text), ("html", self.html)):
            encoding, body = _body(content)
            lines += [
                f"--{boundary}",
                f'Content-Type: text/{subtype}; charset="utf-8"',
                f"Content-Transfer-Encoding: {encoding}",
                "",
                body,
            ]
        lines += [
            f"--{boundary}--",
            "",
        ]
        return CRLF.join(lines).encode("utf-8")


class Prepared:
    """A message's bytes as they go out: a header made by its signer on top of the MIME."""

    def __init__(self, mime: bytes, header: bytes) -> None:
        self._data = header + mime if header else mime
        self.size = len(self._data)

    def data(self) -> bytes:
        return self._data
