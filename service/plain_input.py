"""The common cases of service.signup_input's checks, done cheaply, for the importer: a
file of a million rows spent 30 us a row in email-validator and 12 us in the name's
character checks, most of the time it took to check it.

`normalized_email` gives exactly what `signup_input.normalize_email` gives, and
`clean_name` what `signup_input.clean_name` gives (tests/test_plain_input.py holds them
to it). `normalized_email` recognizes
only a plain subset (ASCII letters, digits, `_ + - .` before the @, ordinary host names
after it, a top-level domain of letters, no special-use domain), for which
email-validator's answer is known: the address as typed with its domain in lower case.
Anything else goes through email-validator itself.
"""

from __future__ import annotations

import functools
import re

from . import signup_input
from .signup_input import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, normalize_email

PLAIN = re.compile(
    r"(?P<local>[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
MAX_LOCAL_LENGTH = 64
MAX_DOMAIN_LENGTH = 253


@functools.cache
def _special_use() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The special-use domains email-validator refuses, and their endings (loaded on first
    use: building the app loads no email-validator, tests/test_startup.py)."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    names = tuple(SPECIAL_USE_DOMAIN_NAMES)
    return names, tuple(f".{name}" for name in names)


def normalized_email(raw: str) -> str:
    """The canonical form of an address, as `signup_input.normalize_email` gives it;
    ValueError with a reader-facing reason."""
    address = raw.strip()
    plain = PLAIN.fullmatch(address) if len(address) <= MAX_EMAIL_LENGTH else None
    if plain is not None:
        local, domain = plain["local"], plain["domain"].lower()
        special_use, special_use_endings = _special_use()
        if (
            len(local) <= MAX_LOCAL_LENGTH
            and len(domain) <= MAX_DOMAIN_LENGTH
            # Two hyphens together may be Punycode (xn--), which email-validator decodes.
            and "--" not in domain
            and domain not in special_use
            and not domain.endswith(special_use_endings)
        ):
            return f"{local}@{domain}"
    return normalize_email(raw)


def clean_name(raw: str) -> str | None:
    """A first name as `signup_input.clean_name` keeps it; ValueError likewise. A printable
    ASCII name holds none of the characters that check looks for one by one, and is its
    own NFC and NFKC form; any other goes through it."""
    if not (raw.isascii() and raw.isprintable()):
        return signup_input.clean_name(raw)
    name = " ".join(raw.split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Please keep your first name under {MAX_NAME_LENGTH} characters.")
    if signup_input.LINK_PATTERN.search(name) or "<" in name or ">" in name:
        raise ValueError("Please enter just your first name.")
    return name
