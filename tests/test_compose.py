"""The marks the composer puts on every email: Message-IDs unique across databases and time,
the VERP envelope sender, and the headers mailbox providers sort and judge mail by. Each
message is parsed back with the standard library."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service import broadcasts, create_app, kinds
from service import outbox as outbox_module
from service.compose import feedback_field, sender_id
from service.config import ConfigError
from service.message_ids import OutboxRef, stamp_of
from service.models import OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from tests.conftest import START, settings_for
from tests.helpers import add_pending, make_subscriber, outbox, run_pass, services_of

SENDER = sender_id("newsletter.test")


def parsed(message) -> email.message.EmailMessage:
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)


def composed(app, kind: str, **row):
    """`kind`'s email for a confirmed reader, as dispatch would compose it (not stored)."""
    services = services_of(app)
    sequence = services.default_sequence
    step = sequence.steps[0]
    values = {
        kinds.SEQUENCE_STEP: {
            "template": step.template,
            "context": {"sequence": sequence.name, "step": step.id},
            "sequence_step": step.id,
        },
        kinds.CONFIRM: {"template": "confirm"},
        kinds.GUIDE_AGAIN: {"template": "guide_again"},
        kinds.WELCOME: {"template": "welcome"},
    }.get(kind, {})
    fields = {"context": {}, "sequence_step": None, **values, **row}
    outbox_row = OutboxMessage(
        id=7, to_address="reader@example.com", kind=kind, created_at=START, **fields
    )
    reader = Subscriber(id=1, email="reader@example.com", first_name="Ann")
    return services.composer.compose(outbox_row, reader, now=START)


def test_a_sequence_step_is_bulk_mail_with_its_step_in_the_feedback_id(app):
    message = parsed(composed(app, kinds.SEQUENCE_STEP))
    step = services_of(app).default_sequence.steps[0].id
    assert message["List-Id"] == '"Low Back Relief" <newsletter.newsletter.test>'
    assert message["Feedback-ID"] == f"step-{step}:sequence:newsletter:{SENDER}"
    assert message["Precedence"] == "bulk"
    assert message["Auto-Submitted"] == "auto-generated"
    # The one-click unsubscribe headers are as they were.
    assert message["List-Unsubscribe"].startswith("<http://newsletter.test/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize("kind", [kinds.CONFIRM, kinds.WELCOME, kinds.GUIDE_AGAIN])
def test_mail_a_reader_asked_for_is_not_bulk(app, kind):
    message = parsed(composed(app, kind))
    assert message["List-Id"] == '"Low Back Relief" <newsletter.newsletter.test>'
    assert message["Feedback-ID"] == f"{kind}:{kind}:newsletter:{SENDER}"
    assert message["Precedence"] is None
    assert message["Auto-Submitted"] is None
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_newsletter_and_its_test_copy(app):
    services = services_of(app)
    with services.database.begin() as session:
        broadcast_id = broadcasts.save_draft(
            session, None, subject="Week two", body="Hold it.", now=START
        ).id
    context = {"broadcast_id": broadcast_id}
    sent = parsed(composed(app, kinds.NEWSLETTER, template="broadcast", context=context))
    assert sent["Feedback-ID"] == f"newsletter-{broadcast_id}:broadcast:newsletter:{SENDER}"
    assert (sent["Precedence"], sent["Auto-Submitted"]) == ("bulk", "auto-generated")
    test = parsed(
        composed(app, kinds.NEWSLETTER_TEST, template="broadcast", context={**context, "test": 1})
    )
    # The owner's copy counts in no newsletter's figures, and is no bulk mail.
    assert test["Feedback-ID"] == f"broadcast_test:broadcast_test:newsletter:{SENDER}"
    assert test["Precedence"] is None
    assert test["Message-ID"].startswith("<sample.")


def test_list_id_and_site_name_are_the_owners(make_app):
    app = make_app(LIST_ID="back-pain.lists.example.com", SITE_NAME='Anne "the back" Müller')
    message = parsed(composed(app, kinds.SEQUENCE_STEP))
    display, _, rest = message["List-Id"].rpartition(" <")
    assert rest == "back-pain.lists.example.com>"
    assert str(email.header.make_header(email.header.decode_header(display))) == (
        'Anne "the back" Müller'
    )
    assert message["Feedback-ID"].split(":")[2] == "back-pain"


@pytest.mark.parametrize("list_id", ["no-dot", "two words.example.com", "<x.example.com>"])
def test_a_list_id_that_is_no_dot_atom_is_refused(tmp_path, list_id):
    with pytest.raises(ConfigError, match="LIST_ID"):
        create_app(settings_for("sqlite://", tmp_path, LIST_ID=list_id))


def test_feedback_id_fields_hold_no_colon():
    assert feedback_field("step:one two") == "step-one-two"
    assert 5 <= len(SENDER) <= 15 and sender_id("NEWSLETTER.test") == SENDER


def test_every_attempt_of_a_row_has_one_message_id_that_names_the_row(smtp_app, smtp, clock):
    services = services_of(smtp_app)
    add_pending(smtp_app, 1)
    handed = []
    for fault in ("451 4.3.0 try again later", None):
        smtp.faults.data = fault
        mailer = services.make_mailer()
        send = mailer.send
        mailer.send = lambda message, send=send: (handed.append(message.message_id), send(message))
        try:
            services.make_dispatcher("w").drain(mailer, clock=clock)
        finally:
            mailer.close()
        clock.advance(minutes=5)
    (row,) = outbox(smtp_app)
    assert (row.status, row.attempts) == (OutboxStatus.SENT, 2)
    assert len(handed) == 2 and handed[0] == handed[1]
    assert smtp.handler.wait_for(1)[0].message["Message-ID"] == handed[0]
    found = services.message_ids.find(f"In-Reply-To: {handed[0]}")
    assert found == OutboxRef(row.id, stamp_of(row.created_at))


def test_two_databases_with_one_key_never_share_a_message_id(
    sqlite_template, tmp_path, clock, smtp
):
    """A database made later (a fresh start, a restore elsewhere) has its own row 1."""
    ids = []
    for n in range(2):
        path = tmp_path / f"db{n}.db"
        path.write_bytes(sqlite_template.read_bytes())
        app = create_app(settings_for(f"sqlite:///{path}", tmp_path / str(n), MAIL_URL=smtp.url))
        services_of(app).clock = clock
        add_pending(app, 1)
        assert [row.id for row in outbox(app)] == [1]
        run_pass(app)
        ids.append(smtp.handler.wait_for(n + 1)[n].message["Message-ID"])
        services_of(app).database.dispose()
        clock.advance(days=30)
    assert ids[0] != ids[1]
    assert all(message_id.endswith("@newsletter.test>") for message_id in ids)


def test_every_send_test_has_a_message_id_of_its_own(smtp_app, smtp):
    runner = smtp_app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["emails", "send-test", "welcome", "owner@example.com"])
        assert result.exit_code == 0, result.output
    first, second = (r.message["Message-ID"] for r in smtp.handler.wait_for(2))
    assert first != second
    assert services_of(smtp_app).message_ids.find(first) is None


def test_each_test_copy_of_a_newsletter_has_a_message_id_of_its_own(smtp_app, smtp):
    services = services_of(smtp_app)
    with services.database.begin() as session:
        broadcast = broadcasts.save_draft(
            session, None, subject="Week two", body="Hold it.", now=services.clock()
        )
        for _ in range(2):
            broadcasts.queue_test(session, broadcast, to="owner@example.com", now=START)
    assert run_pass(smtp_app).sent == 2
    first, second = (r.message["Message-ID"] for r in smtp.handler.wait_for(2))
    assert first != second


def test_verp_puts_the_rows_token_in_mail_from(make_app, smtp):
    app = make_app(MAIL_URL=smtp.url, MAIL_RETURN_PATH="bounces+{token}@bounces.newsletter.test")
    add_pending(app, 2)
    assert run_pass(app).sent == 2
    received = smtp.handler.wait_for(2)
    rows = outbox(app)
    ids = services_of(app).message_ids
    for row, got in zip(rows, received, strict=True):
        assert got.mail_from.startswith("bounces+") and got.mail_from.endswith(
            "@bounces.newsletter.test"
        )
        # The From header stays MAIL_FROM; only the envelope names the row.
        assert got.message["From"] == "Low Back Relief <hello@newsletter.test>"
        assert ids.find(got.mail_from) == OutboxRef(row.id, stamp_of(row.created_at))


def test_without_a_return_path_mail_from_is_the_from_address(smtp_app, smtp):
    add_pending(smtp_app, 1)
    run_pass(smtp_app)
    assert smtp.handler.wait_for(1)[0].mail_from == "hello@newsletter.test"


@pytest.mark.parametrize(
    "return_path", ["bounces@newsletter.test", "bounces+{token}", "b {token}@newsletter.test"]
)
def test_a_return_path_without_its_token_is_refused(tmp_path, return_path):
    with pytest.raises(ConfigError, match="MAIL_RETURN_PATH"):
        create_app(settings_for("sqlite://", tmp_path, MAIL_RETURN_PATH=return_path))


def _international_reader(app) -> int:
    services = services_of(app)
    with services.database.begin() as session:
        reader = make_subscriber(
            session, "zoë@example.org", now=services.clock(), status=SubscriberStatus.CONFIRMED
        )
        outbox_module.enqueue(session, reader, kinds.GUIDE_AGAIN, now=services.clock())
        return reader.id


def test_an_international_address_fails_with_its_reason_on_a_server_without_smtputf8(
    make_app, clock
):
    from tests.smtp_server import SMTPServer

    with SMTPServer(smtputf8=False, pipelining=True) as server:
        app = make_app(MAIL_URL=server.url)
        reader_id = _international_reader(app)
        add_pending(app, 1)  # an ASCII address in the same pass still goes
        report = run_pass(app)
        assert (report.sent, report.failed, report.retried, report.bounced) == (1, 1, 0, 0)
        assert [r.rcpt_tos for r in server.handler.wait_for(1)] == [["r0@example.com"]]
    failed = [row for row in outbox(app) if row.subscriber_id == reader_id]
    assert [(row.status, row.last_error) for row in failed] == [
        (OutboxStatus.FAILED, "the mail server does not accept international addresses")
    ]
    with services_of(app).database.read() as session:
        reader = session.get(Subscriber, reader_id)
        assert reader.status is SubscriberStatus.CONFIRMED  # not a bounce
        events = session.execute(
            sa.text("SELECT kind, detail FROM events WHERE subscriber_id = :id"),
            {"id": reader_id},
        ).all()
    kinds_seen = [kind for kind, _ in events]
    assert kinds_seen.count("undeliverable") == 1
    (detail,) = [detail for kind, detail in events if kind == "undeliverable"]
    if isinstance(detail, str):  # SQLite hands JSON back as text through raw SQL
        import json

        detail = json.loads(detail)
    assert detail == {
        "reason": "the mail server does not accept international addresses",
        "outbox_id": failed[0].id,
        "email_kind": kinds.GUIDE_AGAIN,
    }
    # Failed for good: a later pass does not try it again.
    clock.advance(hours=1)
    assert run_pass(app).claimed == 0


def test_an_international_address_is_delivered_by_a_server_with_smtputf8(smtp_app, smtp):
    _international_reader(smtp_app)
    assert run_pass(smtp_app).sent == 1
    (received,) = smtp.handler.wait_for(1)
    assert received.rcpt_tos == ["zoë@example.org"]
    assert "SMTPUTF8" in received.mail_options


def test_a_sample_is_composed_with_created_at_now(app):
    """Samples (previews, send-test) are no row: their ID is new every time."""
    services = services_of(app)
    first, second = (
        services.composer.sample(
            kinds.WELCOME, "welcome", to="o@example.com", first_name="A", now=START
        )
        for _ in range(2)
    )
    assert first.message_id != second.message_id
    assert first.return_path == second.return_path == ""


def test_claimed_rows_carry_their_creation_time(app, clock):
    add_pending(app, 1)
    created = outbox(app)[0].created_at
    services = services_of(app)
    clock.advance(seconds=1)
    with services.database.begin() as session:
        (claimed,) = outbox_module.claim(
            session, worker="w", now=clock(), limit=1, lease=timedelta(minutes=5)
        )
    with services.database.engine.begin() as connection:
        row = outbox_module.renew_claim(
            connection, claimed.id, worker="w", now=clock(), lease=timedelta(minutes=5)
        )
    assert row.created_at == created == START
