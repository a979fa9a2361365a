"""The dispatch pass on PostgreSQL: one statement per email (the email just sent recorded
with the next one's lease renewal, committed at once, without waiting for the disk), and
what happens when the database connection is lost in the middle of a pass."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from service.models import OutboxMessage, OutboxStatus
from tests.helpers import outbox, run_pass, services_of, sign_up
from tests.test_dispatch import RecordingMailer, drain_with

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def app(smtp_app):
    return smtp_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def onlooker(database_url):
    """A connection of its own, outside the app's pool: what another process would see."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection
    engine.dispose()


def sent_ids(connection) -> list[int]:
    return connection.scalars(
        sa.select(OutboxMessage.id)
        .where(OutboxMessage.status == OutboxStatus.SENT)
        .order_by(OutboxMessage.id)
    ).all()


def test_each_email_is_committed_as_sent_before_the_next_goes_out(app, client, smtp, onlooker):
    """What a scheduler killed at any moment leaves behind: every email the server took
    before the one on the wire is already sent, as another connection sees it."""
    for n in range(5):
        sign_up(client, f"r{n}@example.com")
    ids = [row.id for row in outbox(app)]
    seen = []
    watching = RecordingMailer(
        services_of(app).make_mailer(), lambda _: seen.append(sent_ids(onlooker))
    )
    drain_with(app, watching)
    assert seen == [ids[:n] for n in range(5)]
    assert sent_ids(onlooker) == ids


def test_the_sending_connection_does_not_keep_asynchronous_commit(app, client, smtp):
    """Only the sending loop trades durability for speed: the connection goes back to the
    pool committing as every other one does."""
    sign_up(client, "r0@example.com")
    engine = services_of(app).database.engine
    run_pass(app)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    assert [row.status for row in outbox(app)] == [OutboxStatus.SENT]


def test_a_lost_database_connection_sends_nothing_twice_and_loses_nothing(
    app, client, smtp, onlooker
):
    """PostgreSQL drops the scheduler's connections while the third email is on the wire:
    that email is recorded as sent on a new connection, the rest of the claim is handed
    back at once, and the next pass sends it: every reader gets exactly one email."""
    for n in range(5):
        sign_up(client, f"r{n}@example.com")

    def cut_off(_message) -> None:
        if len(mailer.handed) == 3:
            onlooker.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    mailer = RecordingMailer(services_of(app).make_mailer(), cut_off)
    with pytest.raises(DBAPIError):
        drain_with(app, mailer)
    statuses = [row.status for row in outbox(app)]
    assert statuses == [OutboxStatus.SENT] * 3 + [OutboxStatus.QUEUED] * 2
    report = run_pass(app)  # the same moment: no lease to wait for
    assert report.sent == 2
    received = [r.rcpt_tos[0] for r in smtp.handler.wait_for(5)]
    assert sorted(received) == [f"r{n}@example.com" for n in range(5)]
    assert [row.status for row in outbox(app)] == [OutboxStatus.SENT] * 5
