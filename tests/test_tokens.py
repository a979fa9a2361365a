"""Signed link tokens: one purpose each, expiry by the caller's clock, forgeries refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from itsdangerous import Signer

from service.tokens import ExpiredToken, InvalidToken, Purpose, Tokens

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_round_trip_carries_the_subscriber_and_the_time():
    tokens = Tokens("secret-one")
    data = tokens.read(Purpose.CONFIRM, tokens.make(Purpose.CONFIRM, 42, now=NOW), now=NOW)
    assert (data.subscriber_id, data.issued_at) == (42, NOW)


@pytest.mark.parametrize("made", list(Purpose))
@pytest.mark.parametrize("used", list(Purpose))
def test_a_token_works_only_for_its_own_purpose(made, used):
    tokens = Tokens("secret-one")
    token = tokens.make(made, 7, now=NOW)
    if made == used:
        assert tokens.read(used, token, now=NOW).subscriber_id == 7
    else:
        with pytest.raises(InvalidToken):
            tokens.read(used, token, now=NOW)


def test_another_secret_key_makes_tokens_worthless():
    token = Tokens("secret-one").make(Purpose.UNSUBSCRIBE, 7, now=NOW)
    with pytest.raises(InvalidToken):
        Tokens("secret-two").read(Purpose.UNSUBSCRIBE, token, now=NOW)


def test_expiry_is_measured_against_the_given_now():
    tokens = Tokens("secret-one")
    token = tokens.make(Purpose.CONFIRM, 7, now=NOW)
    week = timedelta(days=7)
    assert tokens.read(Purpose.CONFIRM, token, now=NOW + week, max_age=week).subscriber_id == 7
    with pytest.raises(ExpiredToken) as expired:
        tokens.read(Purpose.CONFIRM, token, now=NOW + week + timedelta(seconds=1), max_age=week)
    assert expired.value.subscriber_id == 7
    # Without a maximum age (unsubscribe links) a token never expires.
    assert tokens.read(Purpose.CONFIRM, token, now=NOW + 100 * week).subscriber_id == 7


ARABIC_INDIC_SEVEN = "\u0667"  # str.isdigit() says yes; int() would accept it too


@pytest.mark.parametrize(
    "payload", ["7", "7.", ".1", "7.x", "x.1", "7.1.2", "-7.1", f"{ARABIC_INDIC_SEVEN}.1", ""]
)
def test_validly_signed_but_malformed_payloads_are_refused(payload):
    import hashlib

    forged = Signer("secret-one", salt="newsletter.confirm", digest_method=hashlib.sha256)
    with pytest.raises(InvalidToken):
        Tokens("secret-one").read(Purpose.CONFIRM, forged.sign(payload).decode(), now=NOW)


def test_tokens_are_short_and_url_safe():
    token = Tokens("secret-one").make(Purpose.UNSUBSCRIBE, 123456, now=NOW)
    assert len(token) < 80
    assert all(ch.isalnum() or ch in "-_." for ch in token)
