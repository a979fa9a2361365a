"""service.feedback.reports: every message in tests/data/bounces read into the reports it
makes, each tied to our outbox row by the mark it carries; random bytes never break it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.feedback.reports import MAX_PAYLOAD, Unparseable, parse
from service.message_ids import MessageIds, stamp_of
from service.models import FeedbackType
from tests.conftest import START, TEST_SECRET

CORPUS = Path(__file__).parent / "data" / "bounces"
IDS = MessageIds(TEST_SECRET, "newsletter.test")
HARD, SOFT, COMPLAINT = FeedbackType.HARD, FeedbackType.SOFT, FeedbackType.COMPLAINT

# file -> [(type, recipient, diagnostic, outbox row named by a mark, or None)]
EXPECTED = {
    "dsn_hard.eml": [(HARD, "gone@example.com", "5.1.1", 1)],
    "dsn_soft.eml": [(SOFT, "full@example.com", "4.2.2", 2)],  # by VERP only
    "arf_complaint.eml": [(COMPLAINT, "complainer@example.com", None, 4)],
    "postfix_no_report.eml": [(HARD, "postfix-gone@example.com", None, 5)],
    "exchange_ndr.eml": [(HARD, "exchange-gone@contoso.example", "5.1.10", 6)],
    "gmail_dsn.eml": [(HARD, "gmail-gone@gmail.example", "5.1.1", 7)],
    "gmail_text.eml": [(HARD, "gmail-old@gmail.example", "5.1.1", 8)],  # by VERP
    "exim_failed.eml": [(HARD, "exim-gone@example.net", "5.1.1", 9)],
    "qmail_failure.eml": [(HARD, "qmail-gone@example.org", "5.1.1", 10)],  # by VERP
    # No mark: the returned message is not quoted. The delayed recipient is left out.
    "dsn_several.eml": [
        (HARD, "several-a@example.com", "5.1.1", None),
        (SOFT, "several-b@example.org", "4.4.7", None),
    ],
    "auto_reply.eml": [],
}


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def test_the_corpus_is_covered():
    assert {p.name for p in CORPUS.glob("*.eml")} == {*EXPECTED, "junk.eml"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_message_makes_its_reports(name):
    reports = parse(read(name))
    got = []
    for report in reports:
        mark = IDS.find(report.reference)
        if mark is not None:
            assert mark.stamp == stamp_of(START)
        got.append((report.type, report.email, report.diagnostic, mark and mark.outbox_id))
    assert got == EXPECTED[name]
    for report in reports:
        assert report.source == "mailbox"
        assert report.event_key.startswith("mailbox:")
        assert report.event_key.endswith(f":{report.email.lower()}")
        assert report.reason
        assert report.occurred_at is not None and report.occurred_at.tzinfo is not None
        assert isinstance(report.payload, str) and report.payload.startswith(
            read(name)[:20].decode()
        )


def test_the_event_key_is_the_reports_own_message_id():
    [report] = parse(read("dsn_hard.eml"))
    assert report.event_key == "mailbox:20261124160001.8C2E71C0040@mx.example.com:gone@example.com"


def test_without_a_message_id_the_key_is_a_hash_of_the_message():
    [report] = parse(read("qmail_failure.eml"))  # qmail writes no Message-ID
    assert report.event_key.startswith("mailbox:sha256-")
    assert parse(read("qmail_failure.eml"))[0].event_key == report.event_key
    [other] = parse(read("qmail_failure.eml") + b"\n")
    assert other.event_key != report.event_key


def test_the_reason_is_the_servers_own_words():
    [report] = parse(read("dsn_hard.eml"))
    assert "User unknown in virtual mailbox table" in report.reason
    [report] = parse(read("exchange_ndr.eml"))
    assert "RESOLVER.ADR.RecipientNotFound" in report.reason


def test_a_delayed_action_alone_is_no_bounce():
    raw = read("dsn_several.eml").replace(b"Action: failed", b"Action: delayed")
    assert parse(raw) == []


def test_a_postfix_delay_notice_is_no_bounce():
    raw = read("postfix_no_report.eml").replace(
        b"Subject: Undelivered Mail Returned to Sender",
        b"Subject: Delayed Mail (still being retried)",
    )
    assert parse(raw) == []


def test_a_feedback_report_that_is_not_abuse_is_no_complaint():
    raw = read("arf_complaint.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert parse(raw) == []


def test_a_complaint_with_the_recipient_redacted_still_names_our_email():
    raw = read("arf_complaint.eml").replace(b"Original-Rcpt-To: <complainer@example.com>\n", b"")
    raw = raw.replace(b"To: <complainer@example.com>", b"To: <redacted@mailbox.example>")
    [report] = parse(raw)
    assert report.type is COMPLAINT
    assert IDS.find(report.reference).outbox_id == 4  # the outcome finds the reader by it


def test_junk_is_unparseable():
    with pytest.raises(Unparseable):
        parse(read("junk.eml"))


@pytest.mark.parametrize("raw", [b"", b"\x00\xff" * 10, b"Subject: x\n\nhello", b"\n\n\n"])
def test_nonsense_is_unparseable(raw):
    with pytest.raises(Unparseable):
        parse(raw)


def test_a_bounce_that_names_nobody_is_unparseable():
    raw = (
        b"From: MAILER-DAEMON@mx.example.com\nSubject: Undelivered Mail Returned to Sender\n"
        b"Content-Type: text/plain\n\nSomething went wrong somewhere.\n"
    )
    with pytest.raises(Unparseable):
        parse(raw)


def test_the_payload_is_cut_to_a_sane_size():
    raw = read("exim_failed.eml") + b"x" * (2 * MAX_PAYLOAD)
    [report] = parse(raw)
    assert len(report.payload) == MAX_PAYLOAD


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_a_result_or_unparseable(raw):
    try:
        reports = parse(raw)
    except Unparseable:
        return
    assert isinstance(reports, list)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(EXPECTED)), st.integers(min_value=0), st.binary(min_size=1, max_size=40)
)
def test_damaged_bounces_are_a_result_or_unparseable(name, at, junk):
    raw = read(name)
    at %= len(raw)
    with contextlib.suppress(Unparseable):
        parse(raw[:at] + junk + raw[at + len(junk) :])


def test_an_auto_reply_with_an_empty_return_path_is_no_bounce():
    # RFC 3834 asks auto-replies for one; the address in its text is no failed recipient.
    raw = read("auto_reply.eml").replace(b"Return-Path: <reader@example.com>", b"Return-Path: <>")
    assert parse(raw) == []
    bare = raw.replace(b"Auto-Submitted: auto-replied\n", b"").replace(
        b"Subject: Automatic reply:", b"Subject: Re:"
    )
    with pytest.raises(Unparseable):
        parse(bare.replace(b"Precedence: bulk\n", b""))


def test_a_bounce_that_names_nobody_but_came_back_by_verp_is_tied_by_it():
    raw = (
        b"From: MAILER-DAEMON@mx.example.com\nSubject: Undelivered Mail Returned to Sender\n"
        b"To: bounces+2-hogo73oqo0-2842fb4c2d8d3b43@newsletter.test\n"
        b"Content-Type: text/plain\n\nYour message could not be delivered: 550 5.1.1\n"
    )
    [report] = parse(raw)
    assert (report.type, report.email, report.diagnostic) == (HARD, None, "5.1.1")
    assert IDS.find(report.reference).outbox_id == 2


def test_a_delivery_report_that_names_nobody_and_nothing_of_ours_is_unparseable():
    raw = read("dsn_several.eml").replace(b"Final-Recipient: RFC822; several-a@example.com\n", b"")
    with pytest.raises(Unparseable):
        parse(raw)
