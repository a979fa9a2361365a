"""What a signup may hold, checked and normalized once, at the edge: the address (and
the mailbox it reaches), the first name, the time zone and the source. The web form, the
JSON API and the importer all read their input through here.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 100
MAX_SOURCE_LENGTH = 100

SOURCE_PATTERN = re.compile(rf"[A-Za-z0-9_.:/-]{{1,{MAX_SOURCE_LENGTH}}}")
# Characters a name never needs: controls (Cc), invisible formatting (Cf: bidirectional
# marks and overrides, which can make a name display as something else in the owner's
# pages, zero-width spaces, soft hyphens), lone surrogates (Cs, which no database can
# store) and private-use code points (Co). The zero-width joiner and non-joiner are Cf
# too, but Persian and Indic names and emoji sequences are spelled with them.
NOT_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Co"})
NAME_JOINERS = frozenset("\u200c\u200d")
LINK_PATTERN = re.compile(r"://|\bwww\.|\bhttps?\b|\.(com|net|org|ru|io|xyz|top)\b", re.IGNORECASE)


class InvalidSignup(ValueError):
    """The signup data has errors; `errors` maps each bad field to a sentence for the reader."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Signup:
    """Validated signup data."""

    email: str
    first_name: str | None
    time_zone: str
    source: str


@functools.cache
def known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def sorted_time_zones() -> tuple[str, ...]:
    """Every zone by name, for a form's list (sorted once per process)."""
    return tuple(sorted(known_time_zones()))


def normalize_email(raw: str) -> str:
    """The canonical form of an address; raise ValueError with a reader-facing reason.

    The domain is stored in its ASCII (IDNA) form, which is how it travels in SMTP, so
    `Bob@EXÄMPLE.de` and `Bob@xn--exmple-cua.de` are one subscriber.
    """
    raw = raw.strip()
    if not raw:
        raise ValueError("Please enter your email address.")
    if len(raw) > MAX_EMAIL_LENGTH:
        raise ValueError("That email address is too long.")
    # Loaded when an address first comes in, not at every start (its patterns: 20 ms).
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return f"{result.local_part}@{result.ascii_domain}"


def email_key(email: str) -> str:
    """The form two addresses are compared in: one subscriber however it is capitalized.

    lower(), not casefold(): casefold would make straße@ and strasse@ one address.
    """
    return email.lower()


# Providers that deliver b.o.m.b@ and bomb@ to one inbox, and the domain each is one with.
DOTS_IGNORED = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email: str) -> str:
    """The inbox an address reaches, as far as can be told from the address: its
    compatibility form (NFKC: full-width letters are letters), lower case, without a
    +tag, and without dots where the provider ignores them. Only the resend cooldown uses
    it; the address is kept, and mailed, as typed."""
    local, _, domain = unicodedata.normalize("NFKC", email).lower().rpartition("@")
    untagged = local.split("+", 1)[0] or local
    if domain in DOTS_IGNORED:
        domain = DOTS_IGNORED[domain]
        untagged = untagged.replace(".", "") or untagged
    return f"{untagged}@{domain}"[:320]


def clean_name(raw: str) -> str | None:
    """A first name as it is kept; ValueError with a reader-facing reason.

    Spammers put links in name fields (the confirmation email would carry them): anything
    that reads as a link is refused, judged on the name's compatibility form (NFKC) so
    that look-alikes such as `evil\u2024com` (a one-dot leader) or full-width letters
    count as what they look like.
    """
    if any(unicodedata.category(ch) in NOT_IN_NAMES and ch not in NAME_JOINERS for ch in raw):
        raise ValueError("Your first name can only be one line of plain text.")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Please keep your first name under {MAX_NAME_LENGTH} characters.")
    looks_like = unicodedata.normalize("NFKC", name)
    if LINK_PATTERN.search(looks_like) or "<" in looks_like or ">" in looks_like:
        raise ValueError("Please enter just your first name.")
    return name


def parse_signup(data: Mapping[str, Any], *, default_time_zone: str, default_source: str) -> Signup:
    """Validate signup fields from a form or JSON; raise InvalidSignup listing every problem."""
    errors: dict[str, str] = {}

    def text(field: str) -> str:
        value = data.get(field)
        if value is None:
            return ""
        if not isinstance(value, str):
            errors[field] = "Must be text."
            return ""
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, from JSON's \\udcff say
                errors[field] = "Must be text (this holds a character that is not one)."
                return ""
        return value

    email = ""
    raw_email = text("email")
    if "email" not in errors:
        try:
            email = normalize_email(raw_email)
        except ValueError as exc:
            errors["email"] = str(exc)

    first_name = None
    raw_name = text("first_name")
    if "first_name" not in errors:
        try:
            first_name = clean_name(raw_name)
        except ValueError as exc:
            errors["first_name"] = str(exc)

    # The browser reports the zone; a missing or unknown one is not the reader's problem.
    time_zone = text("time_zone").strip()
    errors.pop("time_zone", None)
    if time_zone not in known_time_zones():
        time_zone = default_time_zone

    source = text("source").strip() or default_source
    if "source" not in errors and not SOURCE_PATTERN.fullmatch(source):
        errors["source"] = (
            f"Use letters, digits and . _ - : / only, at most {MAX_SOURCE_LENGTH} characters."
        )

    if errors:
        raise InvalidSignup(errors)
    return Signup(email=email, first_name=first_name, time_zone=time_zone, source=source)
