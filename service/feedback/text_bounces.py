"""Bounces without a report part: where each family of mail servers puts the addresses it
could not deliver to, and what it said about each, in the bounce's human-readable text.

Postfix and qmail (`<address>:` and the server's words), Exim ("The following
address(es) failed:"), Exchange/Outlook ("Delivery has failed to these recipients or
groups:") and Gmail ("Delivery to the following recipient failed permanently:", "Your
message wasn't delivered to ..."). Used by service.feedback.reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..models import FeedbackType

ADDRESS = r"[^\s<>()\[\]\"',;:@]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
ADDRESS_RE = re.compile(ADDRESS)
# 5.1.1 but not the tail of 192.0.2.1; 550 but not part of a longer number.
ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
BASIC_STATUS = re.compile(r"(?<![\d.])([45]\d\d)(?![\d.])")
# Where the human-readable part of a text bounce ends and the returned message begins.
ORIGINAL_MARKERS = re.compile(
    r"^\s*(-+\s*(this is a copy of the message|below this line is a copy|original message"
    r"|the original message)|original message headers:|--- below this line)",
    re.IGNORECASE | re.MULTILINE,
)
HARD_WORDS = re.compile(
    r"permanent|user unknown|unknown user|no such (user|mailbox|address)|does not exist"
    r"|address (couldn't|could not) be found|not found|mailbox unavailable|invalid recipient",
    re.IGNORECASE,
)
SOFT_WORDS = re.compile(
    r"temporar|mailbox (is )?full|over quota|quota exceeded|try again later", re.IGNORECASE
)


def status_type(code: str) -> FeedbackType | None:
    """Hard for 5.x.x or 5xx, soft for 4.x.x or 4xx, None for anything else."""
    code = code.strip()
    if code.startswith("5"):
        return FeedbackType.HARD
    if code.startswith("4"):
        return FeedbackType.SOFT
    return None


def status_in(text: str) -> str | None:
    """The first failure status in a server's words: 5.1.1, else 550."""
    for match in ENHANCED_STATUS.finditer(text):
        if match.group(1) in "45":
            return match.group(0)
    match = BASIC_STATUS.search(text)
    return match.group(1) if match else None


def failure_of(detail: str, text: str) -> tuple[FeedbackType, str | None]:
    """Hard or soft, and the status, from what a bounce says about one recipient (`detail`)
    or, failing a status there, in all its words (`text`)."""
    status = status_in(detail) or status_in(text)
    kind = status_type(status or "")
    if kind is None:
        soft = SOFT_WORDS.search(detail) and not HARD_WORDS.search(detail)
        kind = FeedbackType.SOFT if soft else FeedbackType.HARD  # the server gave up on it
    return kind, status


def original_starts(text: str) -> int:
    """Where the copy of the returned message starts in a bounce's text (its end if none)."""
    marker = ORIGINAL_MARKERS.search(text)
    return marker.start() if marker else len(text)


# Each pattern finds (recipient, what was said about it) in one family's bounce text.
POSTFIX_OR_QMAIL = re.compile(
    rf"^[ \t]*<({ADDRESS})>[^:\n]*:[ \t]*\n?(.*?)(?=\n[ \t]*\n|\n[ \t]*<{ADDRESS}>|\Z)",
    re.MULTILINE | re.DOTALL,
)
EXIM_REGION = re.compile(
    r"following address(?:\(es\)|es)? failed:?\s*\n(.*?)(?:\n\s*\n\s*(?:-|\Z)|\Z)",
    re.IGNORECASE | re.DOTALL,
)
EXIM_ENTRY = re.compile(rf"^[ \t]+({ADDRESS})[ \t]*\n((?:[ \t]{{3,}}.*(?:\n|$))*)", re.MULTILINE)
EXCHANGE_REGION = re.compile(
    r"(?:delivery has failed to these recipients or groups|your message (?:to .* )?"
    r"couldn't be delivered|did not reach some or all of the intended recipients)"
    r"(.*?)(?=diagnostic information for administrators|original message headers|\Z)",
    re.IGNORECASE | re.DOTALL,
)
EXCHANGE_DIAGNOSTIC = re.compile(r"remote server returned '([^']*)'", re.IGNORECASE)
GMAIL_PERMANENT = re.compile(
    rf"delivery to the following recipients? failed permanently:\s*\n\s*({ADDRESS})"
    rf"(.*?)(?=\n-+ ?original message|\Z)",
    re.IGNORECASE | re.DOTALL,
)
GMAIL_NOT_DELIVERED = re.compile(
    rf"your message wasn't delivered to ({ADDRESS})(.*?)(?=\n-+ ?original message|\Z)",
    re.IGNORECASE | re.DOTALL,
)


def failed_recipients(text: str) -> Iterator[tuple[str, str]]:
    """(recipient, detail) for each failure the bounce's words name."""
    for pattern in (GMAIL_PERMANENT, GMAIL_NOT_DELIVERED):
        found = [(m.group(1), m.group(2)) for m in pattern.finditer(text)]
        if found:
            yield from found
            return
    exim = EXIM_REGION.search(text)
    if exim:
        found = [(m.group(1), m.group(2)) for m in EXIM_ENTRY.finditer(exim.group(1) + "\n")]
        if found:
            yield from found
            return
    exchange = EXCHANGE_REGION.search(text)
    if exchange:
        region = exchange.group(1)
        diagnostics = EXCHANGE_DIAGNOSTIC.findall(text)
        found = list(dict.fromkeys(ADDRESS_RE.findall(region)))
        if found:
            for address in found:
                yield address, (diagnostics[0] if diagnostics else region)
            return
    yield from ((m.group(1), m.group(2)) for m in POSTFIX_OR_QMAIL.finditer(text))
