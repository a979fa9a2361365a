"""The MIME we build by hand parses back, with the standard library, to what we meant."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.mail import HeaderInjection, Message
from service.mail.message import address_for_transport


def make(**overrides) -> Message:
    fields = {
        "sender": "Low Back Relief <hello@example.com>",
        "to": "reader@example.org",
        "subject": "Your guide",
        "text": "Hello,\nhere is your guide.\n",
        "html": "<p>Hello, here is your guide.</p>",
        "date": datetime(2026, 11, 24, 15, 0, tzinfo=UTC),
        "message_id": "<1.abc@example.com>",
        "headers": {
            "List-Unsubscribe": "<https://example.com/unsubscribe/t>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    fields.update(overrides)
    return Message(**fields)


def parse(message: Message):
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)


def test_multipart_alternative_with_text_then_html():
    parsed = parse(make())
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Hello,\r\nhere is your guide.\r\n"
    assert parts[1].get_content().startswith("<p>Hello")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Message-ID"] == "<1.abc@example.com>"
    assert parsed["Date"] == "Tue, 24 Nov 2026 15:00:00 +0000"


def test_lines_are_crlf_and_short_enough_for_smtp():
    raw = make(html="<p>" + "long words " * 500 + "</p>").as_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_non_ascii_subject_and_sender_name_are_encoded_words():
    message = make(subject="Dein Rücken, Zoë", sender="Rückenfit Zoë <hello@example.com>")
    raw = message.as_bytes()
    assert b"Zo\xc3\xab" not in raw.split(b"\r\n\r\n")[0]  # headers stay 7-bit
    parsed = parse(message)
    assert parsed["Subject"] == "Dein Rücken, Zoë"
    assert parsed["From"].addresses[0].display_name == "Rückenfit Zoë"
    assert parsed["From"].addresses[0].addr_spec == "hello@example.com"


@pytest.mark.parametrize(
    "field,value",
    [
        ("subject", "Hi\r\nBcc: victim@example.com"),
        ("subject", "Hi\nX-Injected: yes"),
        ("to", "reader@example.org\r\nBcc: victim@example.com"),
        ("sender", "Evil\r\n <a@b.c>"),
    ],
)
def test_line_breaks_in_headers_are_refused(field, value):
    with pytest.raises(HeaderInjection):
        make(**{field: value}).as_bytes()


def test_international_domain_travels_as_punycode():
    assert address_for_transport("reader@bücher.example") == ("reader@xn--bcher-kva.example", False)
    parsed = parse(make(to="reader@bücher.example"))
    assert parsed["To"] == "reader@xn--bcher-kva.example"


def test_non_ascii_local_part_needs_smtputf8():
    message = make(to="josé@example.org")
    assert message.needs_smtputf8
    assert "josé@example.org".encode() in message.as_bytes()


@pytest.mark.slow
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
    html=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
)
def test_any_body_text_survives_the_round_trip(text, html):
    parsed = parse(make(text=text, html=html))
    plain, rich = parsed.iter_parts()
    normalize = lambda s: s.replace("\r\n", "\n").replace("\r", "\n")  # noqa: E731
    assert normalize(plain.get_content()) == normalize(text)
    assert normalize(rich.get_content()) == normalize(html)


@pytest.mark.parametrize(
    "subject",
    [
        "Five foam rolling mistakes that make your glutes sorer instead of looser " * 2,
        "Fünf Fehler beim Faszienrollen, die Ihre Gesäßmuskeln eher reizen als lockern " * 2,
    ],
)
def test_long_subjects_are_folded_and_read_back_whole(subject):
    subject = subject.strip()
    raw = make(subject=subject).as_bytes()
    headers = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert max(len(line) for line in headers) <= 78
    assert parse(make(subject=subject))["Subject"] == subject


@pytest.mark.parametrize(
    "text,encoding",
    [
        ("Plain ASCII, short lines.\nTwo of them.", "7bit"),
        ("Zoë's stretch", "quoted-printable"),
        ("x" * 999, "quoted-printable"),  # longer than SMTP allows a line to be
        ("nul\0inside", "quoted-printable"),
    ],
)
def test_bodies_go_unencoded_only_when_that_is_safe(text, encoding):
    parsed = parse(make(text=text, html="<p>" + text + "</p>"))
    plain, rich = parsed.iter_parts()
    assert plain["Content-Transfer-Encoding"] == rich["Content-Transfer-Encoding"] == encoding
    assert plain.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    raw = make(text=text).as_bytes()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_a_boundary_found_in_the_content_is_replaced():
    message = make(text="--=_abc\nlooks like a boundary")
    raw = message.as_bytes(boundary="=_abc")
    assert b'boundary="=_abc"' not in raw
    assert parse(message).get_body(preferencelist=("plain",)).get_content().startswith("--=_abc")
