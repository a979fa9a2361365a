"""Signup input handling and the subscription life cycle, as pure domain functions."""

from __future__ import annotations

import string
import unicodedata
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from service import signup_input, subscriptions
from service.journal import Origin
from service.magnets import LeadMagnet
from service.models import SubscriberStatus
from service.signup_input import InvalidSignup, parse_signup
from service.subscriptions import SignupResult

ORIGIN = Origin(ip="192.0.2.1", user_agent="pytest")
TIPS_MAGNET = LeadMagnet(
    id="guide",
    title="A guide",
    resource=None,
    url=None,
    download_name="guide.pdf",
    incentive_template="welcome",
    sequence="tips",
)
CONSENT = "Send me the guide."


def parse(**data):
    return parse_signup(data, default_time_zone="America/New_York", default_source="form")


def test_valid_signup_is_normalized():
    signup = parse(email="  Ann@Example.COM ", first_name="  Ann   Marie ", time_zone="Asia/Tokyo")
    assert signup.email == "Ann@example.com"
    assert signup.first_name == "Ann Marie"
    assert signup.time_zone == "Asia/Tokyo"
    assert signup.source == "form"


@pytest.mark.parametrize(
    "name,accepted",
    [
        ("Zoë", True),
        ("José María", True),
        ("李小龙", True),
        ("O'Brien-Smith", True),
        ("", True),
        ("Ann\r\nBcc: victim@example.com", False),
        ("Ann\nX", False),
        ("Ann\x00", False),
        ("<script>alert(1)</script>", False),
        ("Win $$$ at http://spam.example", False),
        ("Visit www.spam.example", False),
        ("cheap-pills.com", False),
        ("\u202egnp.exe", False),
        ("x" * 101, False),
        # Look-alikes judged as what they look like (NFKC): a one-dot leader, full width.
        ("evil\u2024com", False),
        ("evil\uff0ecom", False),
        ("\uff57\uff57\uff57.spam", False),
        ("Ann \uff1cb\uff1e", False),
        # Invisible marks: right-to-left mark, Arabic letter mark, zero-width space,
        # soft hyphen; a lone surrogate; private use.
        ("Ann\u200f", False),
        ("\u061cAnn", False),
        ("An\u200bn", False),
        ("An\u00adn", False),
        ("Ann\udcff", False),
        ("Ann\ue000", False),
        # The joiners that Persian names and emoji sequences are spelled with stay.
        ("\u0645\u0647\u200c\u0646\u0627\u0632", True),
        ("Ann \U0001f469\u200d\U0001f4bb", True),
    ],
)
def test_first_name_rules(name, accepted):
    if accepted:
        parse(email="a@example.com", first_name=name)
    else:
        with pytest.raises(InvalidSignup) as error:
            parse(email="a@example.com", first_name=name)
        assert set(error.value.errors) == {"first_name"}


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "a@b",
        "a@@example.com",
        "Ann <ann@example.com>",
        "a" * 250 + "@example.com",
        "a@exa mple.com",
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(email):
    with pytest.raises(InvalidSignup) as error:
        parse(email=email)
    assert error.value.errors["email"]


def test_all_problems_are_reported_at_once():
    with pytest.raises(InvalidSignup) as error:
        parse(email="nope", first_name="a\nb", source="bad source!")
    assert set(error.value.errors) == {"email", "first_name", "source"}


@given(st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_first_name_either_parses_to_safe_text_or_is_refused(name):
    try:
        signup = parse(email="a@example.com", first_name=name)
    except InvalidSignup as error:
        assert set(error.errors) == {"first_name"}
        return
    if signup.first_name is not None:
        assert all(ch not in signup.first_name for ch in "\r\n\0<>")
        assert len(signup.first_name) <= 100
        assert signup.first_name == signup.first_name.strip()
        signup.first_name.encode("utf-8")  # a database can store it
        assert not {unicodedata.category(ch) for ch in signup.first_name} & {"Cc", "Cs", "Co"}


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_email_input_either_parses_or_is_refused_with_a_reason(raw):
    try:
        signup = parse(email=raw)
    except InvalidSignup as error:
        assert error.errors["email"]
        return
    assert "@" in signup.email
    assert signup.email.rpartition("@")[2].isascii()
    assert "\n" not in signup.email and "\r" not in signup.email


@given(st.text(alphabet=string.printable, max_size=120))
def test_any_time_zone_input_yields_a_real_zone(zone):
    from zoneinfo import ZoneInfo

    signup = parse(email="a@example.com", time_zone=zone)
    ZoneInfo(signup.time_zone)  # never raises


def test_lifecycle(database_url, clock):
    from service.db import Database

    database = Database.connect(database_url)
    signup = parse(email="ann@example.com", first_name="Ann")
    cooldown = timedelta(hours=1)
    with database.begin() as session:
        subscriber_id, result = subscriptions.subscribe(
            session, signup, ORIGIN, consent_text=CONSENT, cooldown=cooldown, now=clock()
        )
        assert result is SignupResult.CREATED
    with database.begin() as session:
        _, result = subscriptions.subscribe(
            session, signup, ORIGIN, consent_text=CONSENT, cooldown=cooldown, now=clock()
        )
        assert result is SignupResult.SUPPRESSED
    with database.begin() as session:
        subscriber, confirmed = subscriptions.confirm(
            session,
            subscriber_id,
            ORIGIN,
            token_issued_at=clock(),
            consent_text=CONSENT,
            magnet=TIPS_MAGNET,
            now=clock.advance(minutes=1),
        )
        assert confirmed and subscriber.status is SubscriberStatus.CONFIRMED
    with database.begin() as session:
        subscriber = subscriptions.unsubscribe(
            session, subscriber_id, via="test", now=clock.advance(minutes=1)
        )
        assert subscriber.status is SubscriberStatus.UNSUBSCRIBED
        assert subscriber.unsubscribed_at == clock()
    with database.begin() as session:
        again = subscriptions.unsubscribe(
            session, subscriber_id, via="test", now=clock.advance(minutes=1)
        )
        assert again.unsubscribed_at == clock() - timedelta(minutes=1)  # unchanged
    with database.begin() as session:
        assert subscriptions.unsubscribe(session, 999, via="test", now=clock()) is None
        with pytest.raises(subscriptions.UnknownSubscriber):
            subscriptions.confirm(
                session,
                999,
                ORIGIN,
                token_issued_at=clock(),
                consent_text=CONSENT,
                magnet=TIPS_MAGNET,
                now=clock(),
            )
    database.dispose()


def test_addresses_that_only_casefold_alike_stay_distinct():
    from service.signup_input import email_key

    assert email_key(parse(email="Straße@Example.com").email) == "straße@example.com"
    assert email_key("straße@example.com") != email_key("strasse@example.com")
    assert email_key("Reader@Example.COM") == email_key("reader@example.com")


@pytest.mark.parametrize(
    "address,mailbox",
    [
        ("bomb@gmail.com", "bomb@gmail.com"),
        ("Bomb+1@gmail.com", "bomb@gmail.com"),
        ("b.o.m.b@gmail.com", "bomb@gmail.com"),
        ("b.o.m.b+x.y@googlemail.com", "bomb@gmail.com"),
        ("\uff42\uff4f\uff4d\uff42@gmail.com", "bomb@gmail.com"),
        ("b.omb@example.com", "b.omb@example.com"),  # dots count at most providers
        ("bomb+tag@example.com", "bomb@example.com"),
        ("+only@example.com", "+only@example.com"),
    ],
)
def test_the_mailbox_an_address_reaches(address, mailbox):
    assert signup_input.mailbox_key(address) == mailbox


def signup_in(database, address: str, *, now) -> SignupResult:
    """One signup in a transaction of its own, with an hour's cooldown."""
    with database.begin() as session:
        return subscriptions.subscribe(
            session,
            parse(email=address),
            ORIGIN,
            consent_text=CONSENT,
            cooldown=timedelta(hours=1),
            now=now,
        )[1]


def test_five_spellings_of_one_mailbox_get_one_confirmation(database_url, clock):
    """The probe's finding: each spelling got a confirmation email of its own."""
    from service.db import Database
    from service.models import OutboxMessage, Subscriber

    database = Database.connect(database_url)
    spellings = [
        "bomb@gmail.com",
        "bomb+1@gmail.com",
        "b.o.m.b@gmail.com",
        "BOMB@googlemail.com",
        "\uff42\uff4f\uff4d\uff42@gmail.com",
    ]
    results = [signup_in(database, a, now=clock.advance(minutes=1)) for a in spellings]
    assert results == [SignupResult.CREATED] + [SignupResult.SUPPRESSED] * 4
    with database.read() as session:
        kept = set(session.scalars(sa.select(Subscriber.email)))
        emails = session.scalars(sa.select(OutboxMessage.to_address)).all()
    assert kept == {parse(email=address).email for address in spellings}  # as typed
    assert emails == ["bomb@gmail.com"]
    # After the cooldown one of them may ask again; an unrelated address never waited.
    later = signup_in(database, "b.o.m.b@gmail.com", now=clock.advance(hours=1))
    other = signup_in(database, "bo.mb@example.com", now=clock())
    assert (later, other) == (SignupResult.CONFIRMATION_SENT, SignupResult.CREATED)
    database.dispose()


def test_asking_again_and_again_for_a_variant_never_blocks_the_plain_address(database_url, clock):
    """Someone who signs up `alice+x@` every hour must not keep `alice@` from signing up."""
    from service.db import Database

    database = Database.connect(database_url)

    def signup(address: str) -> SignupResult:
        return signup_in(database, address, now=clock.advance(minutes=1))

    assert signup("alice+x@corp.example") is SignupResult.CREATED
    assert signup("alice+y@corp.example") is SignupResult.SUPPRESSED
    assert signup("alice@corp.example") is SignupResult.CREATED
    assert signup("alice@corp.example") is SignupResult.SUPPRESSED  # its own cooldown
    database.dispose()
