"""Our marks on every email, and finding them again in what comes back.

A Message-ID names the outbox row it was made for: `<{id}.{stamp}.{tag}@{domain}>`, where
`stamp` is the row's creation time (microseconds, base 36) and `tag` an HMAC of both under
the secret key. It stays the same on every attempt (receivers spot a repeat), differs
between two databases that share a key (their rows were made at different moments), and
cannot be forged to point at a row: a bounce or complaint that quotes it is tied to the row
only when the tag and the stamp both match.

A VERP return path (`MAIL_RETURN_PATH=bounces+{token}@news.example.com`) carries the same
three parts as `{id}-{stamp}-{tag}`, all lower case, since some servers fold the case of a
local part. A delivery report then comes back to an address that names its row even when
the report quotes nothing of the message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

TAG_LENGTH = 16  # hex characters: 64 bits
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
# Either form, anywhere in a text (a header, a report's body, an address).
OURS = re.compile(
    r"(?<![0-9a-z])(?P<id>[1-9][0-9]{0,18})(?P<sep>[.-])(?P<stamp>[0-9a-z]{1,14})"
    rf"(?P=sep)(?P<tag>[0-9a-f]{{{TAG_LENGTH}}})(?![0-9a-z])",
    re.IGNORECASE,
)


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = DIGITS[digit] + digits
        if not number:
            return digits


def stamp_of(created_at: datetime) -> str:
    """A row's creation time as it appears in its marks."""
    delta = created_at.astimezone(UTC) - EPOCH
    return _base36((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


@dataclass(frozen=True)
class OutboxRef:
    """An outbox row, as named by a mark found in a returned message."""

    outbox_id: int
    stamp: str  # compare with stamp_of(row.created_at): the row must be the one we marked


class MessageIds:
    """Makes and recognizes our Message-IDs and VERP tokens under one secret key."""

    def __init__(self, secret_key: str, domain: str) -> None:
        self._key = hashlib.sha256(f"message-id:{secret_key}".encode()).digest()
        self.domain = domain or "localhost"

    def _tag(self, outbox_id: int, stamp: str) -> str:
        mac = hmac.new(self._key, f"{outbox_id}.{stamp}".encode(), "sha256")
        return mac.hexdigest()[:TAG_LENGTH]

    def message_id(self, outbox_id: int, created_at: datetime) -> str:
        """The Message-ID of an outbox row's email, the same on every attempt."""
        stamp = stamp_of(created_at)
        return f"<{outbox_id}.{stamp}.{self._tag(outbox_id, stamp)}@{self.domain}>"

    def one_off(self) -> str:
        """A Message-ID for an email that is no row (a preview, a test copy): never reused."""
        return f"<sample.{secrets.token_hex(12)}@{self.domain}>"

    def token(self, outbox_id: int, created_at: datetime) -> str:
        """The VERP token of an outbox row: `{id}-{stamp}-{tag}`."""
        stamp = stamp_of(created_at)
        return f"{outbox_id}-{stamp}-{self._tag(outbox_id, stamp)}"

    def return_path(self, template: str, outbox_id: int, created_at: datetime) -> str:
        """MAIL_RETURN_PATH with the row's token in place of `{token}`."""
        return template.replace("{token}", self.token(outbox_id, created_at))

    def find(self, text: str) -> OutboxRef | None:
        """The first row named in `text` by a mark of ours with a valid tag, or None."""
        for match in OURS.finditer(text or ""):
            outbox_id, stamp = int(match["id"]), match["stamp"].lower()
            if hmac.compare_digest(self._tag(outbox_id, stamp), match["tag"].lower()):
                return OutboxRef(outbox_id, stamp)
        return None
