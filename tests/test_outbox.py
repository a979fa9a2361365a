"""The outbox itself: claims, leases, cancelling, recording outcomes, backoff."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from service import outbox
from service.models import OutboxMessage, OutboxStatus, Subscriber
from tests.helpers import add_pending, services_of

LEASE = timedelta(minutes=5)


def rows(app) -> list[OutboxMessage]:
    from tests.helpers import outbox as all_rows

    return all_rows(app)


def claim(app, worker: str, *, limit: int = 100, now=None):
    services = services_of(app)
    with services.database.begin() as session:
        return outbox.claim(
            session, worker=worker, now=now or services.clock(), limit=limit, lease=LEASE
        )


def test_a_claim_takes_at_most_its_limit_the_earliest_due(app, clock):
    # Ids run one way, due times the other: the claim must follow the due times.
    add_pending(app, 6, due_offsets=[timedelta(seconds=-n) for n in range(6)])
    claimed = claim(app, "A", limit=4)
    assert {r.to_address for r in claimed} == {f"r{n}@example.com" for n in (5, 4, 3, 2)}
    assert [r.status for r in rows(app)].count(OutboxStatus.SENDING) == 4
    assert all(r.attempts == 1 and r.claimed_by == "A" for r in claimed)


def test_the_sending_loop_s_claim_takes_the_same_rows_and_returns_their_ids(app, clock):
    add_pending(app, 6, due_offsets=[timedelta(seconds=-n) for n in range(6)])
    services = services_of(app)
    with services.database.begin() as session:
        ids = outbox.claim_ids(session, worker="A", now=clock(), limit=4, lease=LEASE)
    taken = [r for r in rows(app) if r.status is OutboxStatus.SENDING]
    assert ids == sorted(r.id for r in taken)
    assert {r.to_address for r in taken} == {f"r{n}@example.com" for n in (5, 4, 3, 2)}
    assert all(r.attempts == 1 and r.claimed_by == "A" for r in taken)


def test_rows_not_yet_due_are_not_claimed(app, clock):
    add_pending(app, 2, due_offsets=[timedelta(0), timedelta(seconds=1)])
    assert len(claim(app, "A")) == 1


def test_a_claim_holds_until_its_lease_runs_out(app, clock):
    add_pending(app, 1)
    assert len(claim(app, "A")) == 1
    assert claim(app, "B", now=clock() + LEASE - timedelta(seconds=1)) == []
    [taken] = claim(app, "B", now=clock() + LEASE)
    assert taken.claimed_by == "B" and taken.attempts == 2


def test_renewing_fails_once_the_lease_has_lapsed_or_the_row_is_cancelled(app, clock):
    add_pending(app, 2)
    first, second = claim(app, "A")
    services = services_of(app)
    with services.database.begin() as session:
        assert outbox.renew_claim(session, first.id, worker="A", now=clock(), lease=LEASE)
        assert not outbox.renew_claim(session, first.id, worker="B", now=clock(), lease=LEASE)
        assert not outbox.renew_claim(
            session, second.id, worker="A", now=clock() + LEASE, lease=LEASE
        )
        outbox.cancel_for_subscriber(session, first.subscriber_id, reason="left")
        assert not outbox.renew_claim(session, first.id, worker="A", now=clock(), lease=LEASE)


def test_one_renewal_records_the_email_just_sent_and_renews_the_next(app, clock, caplog):
    """The sending loop's one statement per email: the row sent is marked as mark_sent()
    marks it, the next is renewed as renew_claim() renews it, and nothing else moves."""
    add_pending(app, 4)
    first, second, third, fourth = claim(app, "A")
    services = services_of(app)
    sent_at = clock() + timedelta(seconds=2)
    later = clock() + timedelta(seconds=3)
    with services.database.begin() as session:
        renewed = outbox.renew_claim(
            session,
            second.id,
            worker="A",
            now=later,
            lease=LEASE,
            sent=outbox.Sent(first.id, sent_at),
        )
    assert renewed is not None and renewed.id == second.id and renewed.attempts == 1
    stored = {r.id: r for r in rows(app)}
    assert (stored[first.id].status, stored[first.id].sent_at) == (OutboxStatus.SENT, sent_at)
    assert stored[first.id].claimed_by is None and stored[first.id].due_at == first.due_at
    assert (stored[second.id].status, stored[second.id].due_at) == (
        OutboxStatus.SENDING,
        later + LEASE,
    )
    assert stored[second.id].sent_at is None and stored[second.id].claimed_by == "A"
    assert stored[third.id].due_at == third.due_at  # untouched
    # The next row's claim is gone (cancelled): the email sent is still recorded.
    with services.database.begin() as session:
        outbox.cancel_for_subscriber(session, fourth.subscriber_id, reason="left")
    with services.database.begin() as session:
        assert not outbox.renew_claim(
            session,
            fourth.id,
            worker="A",
            now=later,
            lease=LEASE,
            sent=outbox.Sent(second.id, later),
        )
    assert {r.id: r.status for r in rows(app)}[second.id] is OutboxStatus.SENT
    # Recording a row whose claim moved on says so, and still renews the next.
    with services.database.begin() as session:
        assert outbox.renew_claim(
            session,
            third.id,
            worker="A",
            now=later,
            lease=LEASE,
            sent=outbox.Sent(second.id, later),
        )
    assert f"outbox {second.id} was sent but its claim had moved on" in caplog.text


def test_a_cancelled_row_being_sent_is_still_recorded_as_sent(app, clock):
    add_pending(app, 1)
    [row] = claim(app, "A")
    services = services_of(app)
    with services.database.begin() as session:
        outbox.cancel_for_subscriber(session, row.subscriber_id, reason="left")
    assert rows(app)[0].status is OutboxStatus.CANCELLED
    with services.database.begin() as session:
        assert outbox.mark_sent(session, row.id, worker="A", now=clock())
    assert rows(app)[0].status is OutboxStatus.SENT


def test_release_gives_the_attempt_back(app, clock):
    add_pending(app, 2)
    claimed = claim(app, "A")
    services = services_of(app)
    with services.database.begin() as session:
        released = outbox.release(
            session, [r.id for r in claimed], worker="A", due_at=clock() + timedelta(minutes=1)
        )
    assert released == 2
    assert all(
        (r.status, r.attempts, r.claimed_by) == (OutboxStatus.QUEUED, 0, None) for r in rows(app)
    )


def test_outcomes_are_only_recorded_by_the_claim_holder(app, clock):
    add_pending(app, 1)
    [row] = claim(app, "A")
    services = services_of(app)
    with services.database.begin() as session:
        assert not outbox.mark_failed(session, row.id, worker="B", error="not mine")
        assert not outbox.retry_later(session, row.id, worker="B", due_at=clock(), error="x")
        assert outbox.mark_failed(session, row.id, worker="A", error="mine")
    assert rows(app)[0].status is OutboxStatus.FAILED


def test_a_dedupe_key_allows_one_row(app, clock):
    add_pending(app, 1)
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = session.get(Subscriber, 1)
        inserted = [
            outbox.enqueue(
                session,
                subscriber,
                kind="welcome",
                template="welcome",
                now=clock(),
                dedupe_key="welcome:1",
            )
            for _ in range(2)
        ]
    assert inserted == [True, False]
    assert [r.kind for r in rows(app)] == ["confirm", "welcome"]


def test_backoff_doubles_up_to_its_cap():
    base, cap = timedelta(minutes=1), timedelta(hours=6)
    delays = [outbox.retry_delay(n, base=base, cap=cap) for n in range(1, 12)]
    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert max(delays) == cap and delays[-1] == cap


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_claims_skip_rows_another_claim_holds(app, clock):
    """An open, uncommitted claim neither blocks a second scheduler nor shares rows with it.

    (SQLite has no row locks: its claims take turns through BEGIN IMMEDIATE.)
    """
    add_pending(app, 10)
    services = services_of(app)
    with services.database.begin() as first:
        held = outbox.claim(first, worker="A", now=clock(), limit=5, lease=LEASE)
        result: dict[str, list[int]] = {}

        def second_claim() -> None:
            with services.database.begin() as session:
                taken = outbox.claim(session, worker="B", now=clock(), limit=10, lease=LEASE)
                result["B"] = [r.id for r in taken]

        thread = threading.Thread(target=second_claim)
        thread.start()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the second claim waited for the first one's locks"
    assert len(held) == 5 and len(result["B"]) == 5
    assert not {r.id for r in held} & set(result["B"])


def test_the_claim_statement_uses_the_due_index_on_sqlite(sqlite_url, clock):
    """EXPLAIN the statement claim() really sends, with its real parameters."""
    import sqlalchemy as sa

    from service.db import Database

    database = Database.connect(sqlite_url)
    captured = []

    @sa.event.listens_for(database.engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("WITH"):
            captured.append((statement, parameters))

    with database.begin() as session:
        outbox.claim(session, worker="A", now=clock(), limit=10, lease=LEASE)
    [(statement, parameters)] = captured
    with database.engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    database.dispose()
    details = " | ".join(row[-1] for row in plan)
    assert "ix_outbox_due" in details, details
    assert "SCAN outbox" not in details.replace("SCAN due", ""), details


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_claim_among_many_rows_due_at_once_reads_the_index_in_order(app, clock):
    """A newsletter queues all its rows due at one instant: the claim must read its batch
    off the due index in (due_at, id) order, not sort every due row first."""
    import sqlalchemy as sa

    add_pending(app, 3000, due_offsets=[timedelta(0)] * 3000)
    engine = services_of(app).database.engine
    captured = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("WITH"):
            captured.append((statement, parameters))

    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE outbox")
        connection.commit()
    with services_of(app).database.begin() as session:
        assert (
            len(outbox.claim_ids(session, worker="A", now=clock(), limit=100, lease=LEASE)) == 100
        )
    [(statement, parameters)] = captured
    with engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
    sa.event.remove(engine, "before_cursor_execute", capture)
    details = "\n".join(plan)
    assert "Index Scan using ix_outbox_due" in details, details
    assert "Sort" not in details, details


def test_the_fast_path_writes_times_exactly_as_sqlalchemy_does(app, clock):
    """renew_claim and mark_sent run on the DBAPI cursor; their times must be stored as
    SQLAlchemy stores them, or comparisons with other rows go wrong (SQLite compares text)."""
    add_pending(app, 2)
    first, second = claim(app, "A")
    services = services_of(app)
    later = clock() + timedelta(seconds=30, microseconds=5)
    with services.database.begin() as session:
        renewed = outbox.renew_claim(session, first.id, worker="A", now=later, lease=LEASE)
        assert renewed is not None and renewed.context == {}
        assert outbox.mark_sent(session, second.id, worker="A", now=later)
    stored_rows = {r.id: r for r in rows(app)}
    assert stored_rows[first.id].due_at == later + LEASE
    assert stored_rows[second.id].sent_at == later
    if services.database.dialect == "sqlite":
        with services.database.engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT due_at, created_at FROM outbox WHERE id = ?", (first.id,)
            ).one()
        assert len(stored[0]) == len(stored[1]) == len("2026-11-24 15:05:00.000000")
