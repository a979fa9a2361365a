"""A newsletter's rows written in chunks of subscriber ids: one row per reader however the
chunks fall, a stop between chunks resumed without duplicates, not sent before every chunk
is written, pausing and cancelling on the way, and its count."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from scheduler.__main__ import tick
from service import broadcast_expansion, broadcasts, kinds, subscriptions
from service.broadcast_expansion import HELD_UNTIL, expand_next
from service.models import (
    Broadcast,
    BroadcastStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers import make_subscriber, run_pass, services_of
from tests.test_admin import create_admin, sign_in
from tests.test_broadcasts import draft, finish, send_now, status_of

CHUNK = 3


def add_readers(app, count: int, *, start: int = 0, **fields) -> list[int]:
    services = services_of(app)
    with services.database.begin() as session:
        return [
            make_subscriber(
                session,
                f"x{n}@example.com",
                now=services.clock(),
                status=fields.get("status", SubscriberStatus.CONFIRMED),
            ).id
            for n in range(start, start + count)
        ]


def a_list(app) -> list[int]:
    """Eight confirmed readers, with a pending and an unsubscribed one among them."""
    confirmed = add_readers(app, 4)
    add_readers(app, 1, start=4, status=SubscriberStatus.PENDING)
    confirmed += add_readers(app, 3, start=5)
    add_readers(app, 1, start=8, status=SubscriberStatus.UNSUBSCRIBED)
    return confirmed + add_readers(app, 1, start=9)


def sending(app) -> int:
    broadcast_id = draft(app)
    assert send_now(app, broadcast_id)
    return broadcast_id


def one_chunk(app) -> broadcast_expansion.Chunk | None:
    """One call of expand_next in a transaction of its own, as the scheduler runs it."""
    services = services_of(app)
    with services.database.begin() as session:
        return expand_next(
            session,
            now=services.clock(),
            sequence=services.default_sequence.name,
            chunk=CHUNK,
        )


def every_chunk(app) -> list[broadcast_expansion.Chunk]:
    chunks = []
    while (chunk := one_chunk(app)) is not None:
        chunks.append(chunk)
    return chunks


def rows_of(app, broadcast_id: int) -> list[OutboxMessage]:
    with services_of(app).database.read() as session:
        return list(
            session.scalars(
                sa.select(OutboxMessage)
                .where(OutboxMessage.broadcast_id == broadcast_id)
                .order_by(OutboxMessage.subscriber_id)
            )
        )


def broadcast_of(app, broadcast_id: int) -> Broadcast:
    with services_of(app).database.read() as session:
        broadcast = session.get(Broadcast, broadcast_id)
        session.expunge(broadcast)
        return broadcast


def test_chunks_write_exactly_one_row_per_recipient(app):
    confirmed = a_list(app)
    broadcast_id = sending(app)
    chunks = every_chunk(app)
    # Ten subscriber ids, three at a time: four chunks, the last one finishing it.
    assert [chunk.queued for chunk in chunks] == [3, 2, 2, 1]
    assert [chunk.done for chunk in chunks] == [False, False, False, True]
    rows = rows_of(app, broadcast_id)
    assert [row.subscriber_id for row in rows] == confirmed
    assert {row.dedupe_key for row in rows} == {
        f"{kinds.NEWSLETTER}:{broadcast_id}:{subscriber_id}" for subscriber_id in confirmed
    }
    broadcast = broadcast_of(app, broadcast_id)
    assert broadcast.recipients == 8 == chunks[-1].recipients
    assert not broadcast_expansion.expanding(broadcast)


def test_a_stop_between_chunks_resumes_where_it_stopped_without_duplicates(app):
    confirmed = a_list(app)
    broadcast_id = sending(app)
    one_chunk(app)
    services = services_of(app)
    # The next chunk's scheduler dies before it commits: nothing of that chunk stays.
    with pytest.raises(RuntimeError), services.database.begin() as session:
        assert expand_next(session, now=services.clock(), sequence="", chunk=CHUNK).queued == 2
        raise RuntimeError("killed")
    assert len(rows_of(app, broadcast_id)) == 3
    assert broadcast_of(app, broadcast_id).expanded_through == confirmed[2]
    every_chunk(app)
    assert [row.subscriber_id for row in rows_of(app, broadcast_id)] == confirmed
    assert broadcast_of(app, broadcast_id).recipients == 8
    # Chunks written again (progress lost some other way) write nothing twice.
    with services.database.begin() as session:
        session.get(Broadcast, broadcast_id).expanded_through = 0
    assert sum(chunk.queued for chunk in every_chunk(app)) == 0
    assert len(rows_of(app, broadcast_id)) == 8
    assert broadcast_of(app, broadcast_id).recipients == 8


@pytest.mark.slow  # two sending passes
def test_a_newsletter_is_not_sent_before_every_chunk_is_written(app):
    a_list(app)
    broadcast_id = sending(app)
    one_chunk(app)
    assert run_pass(app).sent == 3
    finish(app)
    assert status_of(app, broadcast_id) is BroadcastStatus.SENDING
    every_chunk(app)
    assert run_pass(app).sent == 5
    finish(app)
    assert status_of(app, broadcast_id) is BroadcastStatus.SENT


@pytest.mark.slow  # two sending passes
def test_pausing_holds_the_rows_written_and_those_still_to_come(app):
    a_list(app)
    broadcast_id = sending(app)
    one_chunk(app)
    services = services_of(app)
    with services.database.begin() as session:
        assert broadcasts.pause(session, broadcast_id, now=services.clock())
    assert one_chunk(app) is None
    assert {row.due_at for row in rows_of(app, broadcast_id)} == {HELD_UNTIL}
    assert run_pass(app).sent == 0
    finish(app)
    assert status_of(app, broadcast_id) is BroadcastStatus.PAUSED
    with services.database.begin() as session:
        assert broadcasts.resume(session, broadcast_id, now=services.clock())
    every_chunk(app)
    assert run_pass(app).sent == 8
    finish(app)
    assert status_of(app, broadcast_id) is BroadcastStatus.SENT


def test_cancelling_stops_the_chunks_not_written(app):
    a_list(app)
    broadcast_id = sending(app)
    one_chunk(app)
    services = services_of(app)
    with services.database.begin() as session:
        assert broadcasts.cancel(session, broadcast_id, now=services.clock())
    assert one_chunk(app) is None
    rows = rows_of(app, broadcast_id)
    assert [row.status for row in rows] == [OutboxStatus.CANCELLED] * 3
    assert run_pass(app).sent == 0
    broadcast = broadcast_of(app, broadcast_id)
    assert broadcast.status is BroadcastStatus.CANCELLED
    # Its count is what was written: nothing more is coming.
    assert not broadcast_expansion.expanding(broadcast) and broadcast.recipients == 3


def test_the_audience_is_fixed_when_the_send_starts(app):
    confirmed = a_list(app)
    broadcast_id = sending(app)
    one_chunk(app)
    services = services_of(app)
    # Meanwhile a reader joins; of those whose chunks are still to come, the pending one
    # confirms and another leaves.
    add_readers(app, 1, start=20)
    pending = confirmed[3] + 1
    with services.database.begin() as session:
        session.get(Subscriber, pending).status = SubscriberStatus.CONFIRMED
        subscriptions.unsubscribe(session, confirmed[5], via="page", now=services.clock())
    every_chunk(app)
    got = [row.subscriber_id for row in rows_of(app, broadcast_id)]
    assert got == sorted({*confirmed, pending} - {confirmed[5]})
    assert broadcast_of(app, broadcast_id).recipients == 8


@pytest.mark.slow
def test_the_count_says_counting_until_every_chunk_is_written(app):
    a_list(app)
    broadcast_id = sending(app)
    create_admin(app)
    owner = app.test_client()
    sign_in(owner)
    path = f"/admin/newsletters/{broadcast_id}/progress.json"
    one_chunk(app)
    progress = owner.get(path).get_json()
    assert progress["status"] == "sending"
    assert (progress["recipients"], progress["recipients_shown"]) == (None, "counting…")
    every_chunk(app)
    progress = owner.get(path).get_json()
    assert (progress["recipients"], progress["recipients_shown"]) == (8, "8")


@pytest.mark.slow
def test_the_scheduler_writes_a_chunk_per_transaction_and_sends_them_all(app, monkeypatch):
    a_list(app)
    broadcast_id = sending(app)
    monkeypatch.setattr(broadcast_expansion, "CHUNK", CHUNK)
    services = services_of(app)
    commits = []
    sa.event.listen(services.database.engine, "commit", lambda _conn: commits.append(1))
    dispatcher = services.make_dispatcher("test-worker")
    report = tick(
        services,
        dispatcher,
        started_at=services.clock(),
        clock=services.clock,
        stop=threading.Event(),
    )
    assert report.sent == 8
    assert len(rows_of(app, broadcast_id)) == 8
    assert status_of(app, broadcast_id) is BroadcastStatus.SENT
    assert broadcast_of(app, broadcast_id).recipients == 8
    assert len(commits) >= 4  # a transaction per chunk, at least


@pytest.mark.slow
@pytest.mark.parametrize("action", ["pause", "cancel"])
# SQLite's writers take turns: there a chunk and a pause never overlap.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_pausing_or_cancelling_waits_for_the_chunk_being_written(app, action):
    a_list(app)
    broadcast_id = sending(app)
    services = services_of(app)
    done = threading.Event()

    def act() -> None:
        with services.database.begin() as session:
            getattr(broadcasts, action)(session, broadcast_id, now=services.clock())
        done.set()

    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with services.database.begin() as session:
        assert expand_next(session, now=services.clock(), sequence="", chunk=CHUNK).queued == 3
        helper = threading.Thread(target=act)
        helper.start()
        with services.database.engine.connect() as watcher:
            # Until the pause (or cancel) waits for this chunk's lock on the newsletter.
            while not watcher.execute(waiting).scalar() and not done.is_set():
                watcher.rollback()
        assert not done.is_set()
    helper.join()
    rows = rows_of(app, broadcast_id)
    if action == "pause":
        assert {row.due_at for row in rows} == {HELD_UNTIL}
    else:
        assert {row.status for row in rows} == {OutboxStatus.CANCELLED}
    assert one_chunk(app) is None
