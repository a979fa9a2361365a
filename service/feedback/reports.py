"""Reading one message from the bounce mailbox: what it reports, as Reports.

- RFC 3464 delivery status notifications (`multipart/report; report-type=delivery-status`):
  a report per recipient whose Action is `failed`; a 5.x.x Status is a hard bounce, a
  4.x.x one (the server gave up after temporary failures) a soft bounce.
- RFC 5965 complaints (`report-type=feedback-report`, Feedback-Type `abuse`).
- The common bounces with no report part: Postfix ("Undelivered Mail Returned to Sender"),
  Exchange/Outlook NDRs, Gmail's, Exim's and qmail's, read from their human-readable text
  (service.feedback.text_bounces).

An empty list means the message is no bounce: an auto-reply, or a notice that delivery is
merely delayed (`Action: delayed`, "still being retried"). Those are left alone because
the server is still trying: the final outcome, failed or delivered, follows in a report of
its own, and counting the warning as a soft bounce would count one trouble twice and push
a reader who may yet get the email towards the soft-bounce limit. A message that is none
of these raises `Unparseable`.

Each report's `reference` holds every text that may carry our mark (service.message_ids):
the bounce's own To/Delivered-To/X-Original-To (a VERP return path), then the returned
message's headers, then the rest of the text. Pure: no database, no clock.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.utils
import functools
import hashlib
import logging
import re
from datetime import UTC, datetime

from ..message_ids import OURS
from ..models import FeedbackType
from .outcomes import Report
from .text_bounces import (
    ADDRESS_RE,
    failed_recipients,
    failure_of,
    original_starts,
    status_type,
)

logger = logging.getLogger(__name__)

SOURCE = "mailbox"
MAX_PAYLOAD = 64 * 1024  # characters of the raw message kept with each event
MAX_REFERENCE = 256 * 1024
# Headers of the bounce itself that a VERP return path arrives in.
ENVELOPE_HEADERS = (
    "To",
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Failed-Recipients",
)

SYSTEM_SENDER = re.compile(
    r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|microsoftexchange[0-9a-f]*)@",
    re.IGNORECASE,
)
BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|returned to sender|delivery status notification \(failure\)"
    r"|failure notice|mail delivery failed|delivery failure|delivery has failed"
    r"|could not be delivered|non.?delivery",
    re.IGNORECASE,
)
DELAY_SUBJECT = re.compile(
    r"delayed mail|still being retried|delivery status notification \(delay\)"
    r"|warning: message .* delayed|delivery delayed|delayed delivery",
    re.IGNORECASE,
)
AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|auto:|out of (the )?office|abwesenheit"
    r"|r[ée]ponse automatique|vacation|away from)",
    re.IGNORECASE,
)


class Unparseable(ValueError):
    """The message is no delivery report, complaint or auto-reply we can read."""


def parse(raw: bytes) -> list[Report]:
    """The reports one raw message makes; [] for no bounce; raises Unparseable."""
    try:
        message = email.message_from_bytes(raw)
        return _Reader(raw, message).reports()
    except Unparseable:
        raise
    except Exception as exc:
        # A message odd enough to trip the email package must not stop a poll; it stays
        # in the mailbox, for a person, like any other message we cannot read.
        logger.debug("bounce message not understood", exc_info=True)
        raise Unparseable(f"the message could not be read ({type(exc).__name__})") from exc


def _header(message: email.message.Message, name: str) -> str:
    """A header's value as text, encoded words decoded; '' when absent or broken."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return str(value)


def _text_of(part: email.message.Message) -> str:
    """A leaf part's content as text, whatever its transfer encoding."""
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _address(value: str) -> str | None:
    """The address in a DSN field (`rfc822; reader@example.com`) or a header."""
    value = value.split(";", 1)[1] if ";" in value else value
    match = ADDRESS_RE.search(value)
    return match.group(0).strip(".") if match else None


def _one_line(text: str, limit: int = 1000) -> str:
    return " ".join(text.split())[:limit]


class _Reader:
    """One message, read once."""

    def __init__(self, raw: bytes, message: email.message.Message) -> None:
        self.raw = raw
        self.message = message
        self.parts = list(message.walk())
        self.subject = _header(message, "Subject")
        self.sender = _address(_header(message, "From")) or ""

    # --- what every report shares -------------------------------------------------

    def key_base(self) -> str:
        message_id = _header(self.message, "Message-ID").strip().strip("<>").strip()
        if message_id and len(message_id) <= 150 and not any(c.isspace() for c in message_id):
            return message_id
        return "sha256-" + hashlib.sha256(self.raw).hexdigest()[:40]

    def occurred_at(self) -> datetime | None:
        try:
            moment = email.utils.parsedate_to_datetime(_header(self.message, "Date"))
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def payload(self) -> str:
        return self.raw[:MAX_PAYLOAD].decode("utf-8", errors="replace")

    def may_name_our_email(self) -> bool:
        """Whether something shaped like our mark is in it (the outcome checks its tag)."""
        return OURS.search(self.reference) is not None

    @functools.cached_property
    def reference(self) -> str:
        """Every text that may carry our mark, the likeliest first."""
        texts = [_header(self.message, name) for name in ENVELOPE_HEADERS]
        texts += [str(self.message.get("Return-Path", ""))]
        for part in self.parts:
            kind = part.get_content_type()
            if kind in ("message/rfc822", "message/global") and part.is_multipart():
                returned = part.get_payload(0)
                texts.append("\n".join(f"{k}: {v}" for k, v in returned.items()))
        for part in self.parts:
            if not part.is_multipart():
                texts.append(_text_of(part))
        return "\n".join(t for t in texts if t)[:MAX_REFERENCE]

    def make(self, kind: FeedbackType, recipient: str | None, reason: str, status: str | None):
        return Report(
            source=SOURCE,
            event_key=f"{SOURCE}:{self.key_base()}:{(recipient or '').lower()}",
            type=kind,
            email=recipient,
            reference=self.reference,
            reason=_one_line(reason),
            diagnostic=status,
            occurred_at=self.occurred_at(),
            payload=self.payload(),
            authenticated=False,  # anyone can mail us: acted on only with our mark
        )

    # --- deciding what the message is -----------------------------------------------

    def reports(self) -> list[Report]:
        if self.message.get_content_type() == "multipart/report":
            report_type = self.message.get_param("report-type") or ""
            if isinstance(report_type, tuple):  # an RFC 2231 value
                report_type = email.utils.collapse_rfc2231_value(report_type)
            report_type = report_type.lower()
            if report_type == "delivery-status":
                return self.delivery_status()
            if report_type == "feedback-report":
                return self.feedback_report()
            if report_type in ("disposition-notification", "delivery-notification"):
                return []  # a read receipt, not a bounce
        if DELAY_SUBJECT.search(self.subject):
            return []
        if SYSTEM_SENDER.match(self.sender) or BOUNCE_SUBJECT.search(self.subject):
            return self.text_bounce(guess=True)
        if self.is_auto_reply():
            return []
        # RFC 3834 asks auto-replies for an empty return path too: without a bounce's other
        # signs, only a recipient in a known bounce layout makes it one.
        if str(self.message.get("Return-Path", "")).strip() == "<>":
            return self.text_bounce(guess=False)
        raise Unparseable("neither a delivery report, a complaint nor a known bounce")

    def is_auto_reply(self) -> bool:
        auto = _header(self.message, "Auto-Submitted").strip().lower()
        precedence = _header(self.message, "Precedence").strip().lower()
        return bool(
            (auto and auto != "no")
            or self.message.get("X-Autoreply")
            or self.message.get("X-Autorespond")
            or precedence == "auto_reply"
            or AUTO_REPLY_SUBJECT.match(self.subject)
        )

    # --- RFC 3464 ------------------------------------------------------------------

    def delivery_status(self) -> list[Report]:
        blocks = self.status_blocks()
        if not blocks:
            raise Unparseable("a delivery report without a delivery-status part")
        reports, seen = [], set()
        # The first block is about the message; the rest about one recipient each.
        for fields in blocks[1:] or blocks:
            action = fields.get("action", "").strip().lower()
            if action != "failed":
                continue  # delayed (still trying), delivered, relayed, expanded
            recipient = _address(fields.get("original-recipient", "")) or _address(
                fields.get("final-recipient", "")
            )
            if recipient is None and not self.may_name_our_email():
                raise Unparseable("a delivery report that names no recipient")
            status = (fields.get("status", "").split() or [""])[0]
            diagnostic = fields.get("diagnostic-code", "")
            diagnostic = diagnostic.split(";", 1)[1] if ";" in diagnostic else diagnostic
            kind = status_type(status) or FeedbackType.HARD  # failed, with no status
            if recipient and recipient.lower() in seen:
                continue
            seen.add((recipient or "").lower())
            reason = diagnostic.strip() or f"delivery failed (status {status or 'unknown'})"
            reports.append(self.make(kind, recipient, reason, status or None))
        return reports

    def status_blocks(self) -> list[dict[str, str]]:
        """The delivery-status part's blocks of fields, names in lower case."""
        for part in self.parts:
            if part.get_content_type() not in (
                "message/delivery-status",
                "message/global-delivery-status",
            ):
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                return [
                    {k.lower(): " ".join(str(v).split()) for k, v in block.items()}
                    for block in payload
                ]
            return _field_blocks(_text_of(part))
        return []

    # --- RFC 5965 ------------------------------------------------------------------

    def feedback_report(self) -> list[Report]:
        fields: dict[str, str] = {}
        for part in self.parts:
            if part.get_content_type() == "message/feedback-report":
                payload = part.get_payload()
                if isinstance(payload, list):
                    for block in payload:
                        fields.update({k.lower(): str(v) for k, v in block.items()})
                else:
                    for block in _field_blocks(_text_of(part)):
                        fields.update(block)
        if not fields:
            raise Unparseable("a complaint report without a feedback-report part")
        feedback_type = fields.get("feedback-type", "").strip().lower()
        if feedback_type != "abuse":
            return []  # fraud, virus, not-spam, other: no reader objected to our email
        returned = self.returned_headers()
        recipient = _address(fields.get("original-rcpt-to", "")) or _address(
            _header(returned, "To") if returned is not None else ""
        )
        reporter = fields.get("user-agent") or fields.get("reported-domain") or "a mailbox provider"
        reason = f"reported as spam (feedback report from {reporter.strip()})"
        return [self.make(FeedbackType.COMPLAINT, recipient, reason, None)]

    def returned_headers(self) -> email.message.Message | None:
        """The returned message (or its headers), as the report quotes it."""
        for part in self.parts:
            kind = part.get_content_type()
            if kind in ("message/rfc822", "message/global") and part.is_multipart():
                return part.get_payload(0)
            if kind == "text/rfc822-headers":
                return email.message_from_string(_text_of(part))
        return None

    # --- bounces with no report part --------------------------------------------------

    def human_text(self) -> str:
        """The bounce's own words: its first text part (HTML as text), up to the copy of
        the returned message."""
        text = ""
        for part in self.parts:
            if part.get_content_type() == "message/rfc822":
                break  # what follows is the returned message
            if part.get_content_type() == "text/plain":
                text = _text_of(part)
                break
            if part.get_content_type() == "text/html" and not text:
                text = re.sub(r"<[^>]*>", " ", _text_of(part))
        return text[: original_starts(text)]

    def text_bounce(self, *, guess: bool) -> list[Report]:
        """A bounce without a report part, from its words; `guess`: one address named in
        them may be taken for the recipient."""
        text = self.human_text()
        failures = list(failed_recipients(text))
        own = {a.lower() for a in ADDRESS_RE.findall(_header(self.message, "To"))}
        if not failures and guess:
            # One address named in the bounce's words, not ours or the server's, is the one.
            named = {
                a.lower(): a
                for a in ADDRESS_RE.findall(text)
                if a.lower() not in own and not SYSTEM_SENDER.match(a)
            }
            failures = [(a, text) for a in named.values()] if len(named) == 1 else []
        if not failures:
            failed_header = _address(_header(self.message, "X-Failed-Recipients"))
            if failed_header:
                failures = [(failed_header, text)]
        if not failures and guess and self.may_name_our_email():
            failures = [(None, text)]  # the outcome finds the reader by our mark
        if not failures:
            raise Unparseable("a bounce that names no recipient")
        reports, seen = [], set()
        for recipient, detail in failures:
            key = (recipient or "").lower()
            if key in seen or key in own:
                continue
            seen.add(key)
            kind, status = failure_of(detail, text)
            reason = _one_line(detail) or self.subject or "returned as undeliverable"
            reports.append(self.make(kind, recipient, reason, status))
        return reports


def _field_blocks(text: str) -> list[dict[str, str]]:
    """`Name: value` blocks separated by blank lines (continuation lines folded in)."""
    blocks, fields, name = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                blocks.append(fields)
            fields, name = {}, None
        elif line[0] in " \t" and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    if fields:
        blocks.append(fields)
    return blocks
