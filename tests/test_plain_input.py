"""The importer's cheap checks of an address and a name give what signup_input's full
checks give, for any input."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service import plain_input, signup_input

ADDRESS_PARTS = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        ".",
        "..",
        "-",
        "--",
        "_",
        "+",
        "@",
        " ",
        "é",
        "xn--",
        "com",
        "LOCAL",
        "localhost",
        "arpa",
        "invalid",
        "test",
        "1",
        "ß",
        "\u200b",
        "'",
        'q"',
        "x" * 64,
    ]
)


def outcome(check, raw: str):
    try:
        return "ok", check(raw)
    except ValueError as exc:
        return "refused", str(exc)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.one_of(st.emails(), st.lists(ADDRESS_PARTS, max_size=12).map("".join), st.text()))
@example("Bob@EXAMPLE.com")
@example("a@b.c")
@example("bob@xn--exmple-cua.de")
@example("x@sub.arpa")
@example("plain@invalid")
@example(" padded@example.com ")
@example("a" * 65 + "@example.com")
@example("a@" + "b" * 64 + ".com")
@example("user@domain.123")
def test_an_address_is_normalized_as_email_validator_normalizes_it(raw):
    assert outcome(plain_input.normalized_email, raw) == outcome(signup_input.normalize_email, raw)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
@example("  Ann   Marie ")
@example("www.spam")
@example("Bob <b@c>")
@example("a" * 101)
@example("Zoë")
@example("\t")
def test_a_name_is_cleaned_as_the_signup_form_cleans_it(raw):
    assert outcome(plain_input.clean_name, raw) == outcome(signup_input.clean_name, raw)


@pytest.mark.parametrize("raw", ["reader1@example.com", "Jo.Bloggs+news@Mail.Example.CO.UK"])
def test_a_plain_address_skips_email_validator(raw, monkeypatch):
    def not_called(_raw):
        raise AssertionError("email-validator was asked")

    monkeypatch.setattr(plain_input, "normalize_email", not_called)
    assert plain_input.normalized_email(raw) == raw.split("@")[0] + "@" + raw.split("@")[1].lower()
