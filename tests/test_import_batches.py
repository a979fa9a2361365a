"""Imports a batch at a time with set-based statements: the same results as the row by
row import, a statement count that does not grow with the rows, the suppression list
checked again when a batch is written, and the CLI's import all or nothing."""

from __future__ import annotations

import contextlib
import io

import pytest
import sqlalchemy as sa

from service import erasure, importer, imports
from service.imports import batch
from service.models import (
    ConsentRecord,
    Enrollment,
    Event,
    Import,
    ImportStatus,
    OutboxMessage,
    Subscriber,
    SubscriberTag,
    Suppression,
)
from tests.helpers import make_subscriber, services_of
from tests.test_imports import CONSENT, Died, csv_of, job_of, scheduler_pass, upload

VARIED = (
    "email,first_name,status,signed_up_utc,confirmed_utc,unsubscribed_utc,source,tags\n"
    "ann@example.com,Ann,,2024-01-02 03:04:05,,,blog,vip;topic:hips\n"
    "Known.Named@Example.com,Someone Else,,,,,,\n"
    "known.unnamed@example.com,Zoë O'Brien-Łukasz,,,,,,topic:hips\n"
    "ANN@example.com,Ann again,,,,,,\n"
    "not an address,Bob,,,,,,\n"
    'quoted@example.com,"Jean ""JJ"", Jr.",,,,,,\n'
    "left@example.com,Lou,unsubscribed,,2024-02-01 00:00:00,2024-03-01 00:00:00,,\n"
    "gone@example.com,,bounced,,,,,\n"
    "erased@example.com,Eve,,,,,,\n"
    "emoji@example.com,👩‍🔬 Marie,,,,,,\n"
    "dévora@exämple.de,Dévora,,,,,,\n"
    "badtag@example.com,Tag,,,,,,Not A Tag!\n"
    "plus+tag@gmail.com,محمد,,,,,,vip\n"
    "=cmd@example.com,'=SUM(A1),,,,,,\n"
)


def _known(app) -> None:
    services = services_of(app)
    now = services.clock()
    with services.database.begin() as session:
        make_subscriber(session, "Known.Named@Example.com", now=now, first_name="Kim")
        unnamed = make_subscriber(session, "known.unnamed@example.com", now=now)
        session.add(
            SubscriberTag(subscriber_id=unnamed.id, tag="vip", added_at=now, added_by="owner")
        )
        erased = make_subscriber(session, "erased@example.com", now=now)
        erasure.erase(session, erased.id, now=now)


def _sorted(rows) -> list:
    return sorted(rows, key=repr)


def _state(app) -> dict:
    """Everything an import writes, without ids (which differ from run to run)."""
    with services_of(app).database.read() as session:
        email = {s.id: s.email for s in session.scalars(sa.select(Subscriber))}
        readers = _sorted(
            (
                s.email,
                s.email_key,
                s.mailbox_key,
                s.first_name,
                s.status.value,
                s.time_zone,
                s.source,
                s.created_at,
                s.confirmed_at,
                s.unsubscribed_at,
                s.bounced_at,
                s.wants_newsletters,
            )
            for s in session.scalars(sa.select(Subscriber))
        )
        return {
            "readers": readers,
            "tags": _sorted(
                (email[t.subscriber_id], t.tag, t.added_by, t.added_at)
                for t in session.scalars(sa.select(SubscriberTag))
            ),
            "consents": _sorted(
                (email[c.subscriber_id], c.action, c.source, c.text, c.text_version, c.at)
                for c in session.scalars(sa.select(ConsentRecord))
            ),
            "events": _sorted(
                (email.get(e.subscriber_id), e.kind, repr(e.detail), e.at)
                for e in session.scalars(sa.select(Event))
            ),
            "enrollments": _sorted(
                (email[e.subscriber_id], e.sequence, e.status.value, e.steps_passed, e.next_due_at)
                for e in session.scalars(sa.select(Enrollment))
            ),
            "outbox": _sorted(
                (m.to_address, m.kind, m.template, m.dedupe_key, m.status.value)
                for m in session.scalars(sa.select(OutboxMessage))
            ),
        }


def _import_in_batches(app, data: bytes, *, mode, join_sequence=True, tags=("import:2026",)):
    services = services_of(app)
    import_id = upload(app, data)
    scheduler_pass(app)
    with services.database.begin() as session:
        assert imports.start_import(
            session,
            import_id,
            mode=mode,
            consent_text=CONSENT,
            join_sequence=join_sequence,
            sequence=services.default_sequence.name,
            claimed_by=None,
            now=services.clock(),
            tags_for_all=list(tags),
        )
    scheduler_pass(app)
    job = job_of(app, import_id)
    assert job.status is ImportStatus.DONE, job.error
    return job


@pytest.mark.slow
def test_importing_in_batches_writes_what_the_row_by_row_import_writes(app, monkeypatch):
    """A varied file (duplicates, readers on the list, invalid rows, tags, odd names,
    people who left, an erased address) gives the same rows either way."""
    monkeypatch.setattr(imports.runner, "BATCH_ROWS", 4)
    monkeypatch.setattr(imports, "INLINE_BYTES", 100)
    services = services_of(app)
    for mode in importer.Mode:
        _known(app)
        with services.database.begin() as session:
            plan = importer.read_plan(
                session, VARIED.encode(), default_time_zone=services.settings.DEFAULT_TIME_ZONE
            )
            expected_done = importer.apply_plan(
                session,
                plan,
                consent_text=CONSENT,
                mode=mode,
                join_sequence=True,
                sequence=services.default_sequence.name,
                now=services.clock(),
                tags_for_all=["import:2026"],
            )
        expected = _state(app)
        _wipe(app)
        _known(app)
        job = _import_in_batches(app, VARIED.encode(), mode=mode)
        assert _state(app) == expected, mode
        assert job.applied == vars(expected_done), mode
        assert job.counts == plan.counts
        _wipe(app)


def _wipe(app) -> None:
    with services_of(app).database.begin() as session:
        for model in (
            OutboxMessage,
            Enrollment,
            SubscriberTag,
            ConsentRecord,
            Event,
            Subscriber,
            Suppression,
        ):
            session.execute(sa.delete(model))


def _statements(app, data: bytes) -> int:
    engine = services_of(app).database.engine
    statements = []

    def counted(_connection, _cursor, statement, *_args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", counted)
    try:
        _import_in_batches(app, data, mode=importer.Mode.CONFIRMED)
    finally:
        sa.event.remove(engine, "before_cursor_execute", counted)
    return len(statements)


@pytest.mark.slow
def test_the_statements_an_import_runs_do_not_grow_with_its_rows(app, monkeypatch):
    monkeypatch.setattr(imports, "INLINE_BYTES", 100)
    services = services_of(app)
    with services.database.begin() as session:  # half the rows are on the list already
        for n in range(0, 1000, 2):
            make_subscriber(session, f"r{n}@example.com", now=services.clock())
    few = _statements(app, csv_of(10, start=5000))
    many = _statements(app, csv_of(1000))
    assert many <= few + 5, (few, many)
    with services.database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 1010
        named = sa.select(sa.func.count()).where(Subscriber.first_name.is_not(None))
        assert session.scalar(named) == 1010  # the file named those on the list


def test_someone_erased_while_a_batch_is_made_ready_is_not_imported(app, monkeypatch):
    """A batch is read outside the write transaction; the suppression list is checked
    again inside it."""
    monkeypatch.setattr(imports, "INLINE_BYTES", 100)
    services = services_of(app)
    real = batch.read_batch

    def erased_meanwhile(session, job, **kwargs):
        found = real(session, job, **kwargs)
        if job.applied_line:
            return found
        with services.database.begin() as other:
            r3 = make_subscriber(other, "r3@example.com", now=services.clock())
            erasure.erase(other, r3.id, now=services.clock())
            other.add(
                Suppression(
                    email_hash=erasure.suppression_hash("r5@example.com"),
                    reason="complaint",
                    created_at=services.clock(),
                )
            )
        return found

    monkeypatch.setattr(batch, "read_batch", erased_meanwhile)
    job = _import_in_batches(app, csv_of(8), mode=importer.Mode.CONFIRMED)
    assert job.applied["created"] == 6
    with services.database.read() as session:
        emails = set(session.scalars(sa.select(Subscriber.email)))
    assert emails == {f"r{n}@example.com" for n in (0, 1, 2, 4, 6, 7)}


def _cli_import(app, tmp_path, data: bytes, *args: str):
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    return app.test_cli_runner().invoke(
        args=[
            "subscribers",
            "import",
            str(path),
            "--mode",
            "confirmed",
            "--consent",
            CONSENT,
            *args,
        ]
    )


@pytest.mark.slow
def test_a_cli_import_that_fails_in_a_late_batch_leaves_the_list_as_it_was(
    app, tmp_path, monkeypatch
):
    monkeypatch.setattr(imports.runner, "BATCH_ROWS", 3)
    _known(app)
    before = _state(app)
    real = batch.apply_batch
    batches = []

    def fourth_batch_fails(*args, **kwargs):
        batches.append(1)
        if len(batches) == 4:
            raise RuntimeError("a row the database refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "apply_batch", fourth_batch_fails)
    result = _cli_import(app, tmp_path, VARIED.encode(), "--join-sequence", "--tag", "vip")
    assert result.exit_code != 0
    assert "nothing was imported" in result.output, result.output
    assert _state(app) == before
    with services_of(app).database.read() as session:
        (job,) = session.scalars(sa.select(Import)).all()
        assert job.status is ImportStatus.FAILED
    assert scheduler_pass(app) == 0


@pytest.mark.slow
def test_stopping_the_cli_half_way_takes_its_import_back(app, tmp_path, monkeypatch):
    monkeypatch.setattr(imports.runner, "BATCH_ROWS", 3)
    _known(app)
    before = _state(app)
    real = batch.apply_batch
    batches = []

    def interrupted(*args, **kwargs):
        batches.append(1)
        if len(batches) == 3:
            raise KeyboardInterrupt  # Ctrl-C, SIGTERM or SIGHUP
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "apply_batch", interrupted)
    result = _cli_import(app, tmp_path, VARIED.encode(), "--tag", "vip")
    assert "the import is cancelled and nothing was imported" in result.output, result.output
    assert _state(app) == before


@pytest.mark.slow
def test_a_cli_import_whose_command_died_is_taken_back_not_finished(app, clock, monkeypatch):
    monkeypatch.setattr(imports.runner, "BATCH_ROWS", 7)
    services = services_of(app)
    with services.database.begin() as session:
        import_id = imports.store_upload(
            session,
            io.BytesIO(csv_of(30)),
            filename="list.csv",
            created_by=imports.COMMAND_LINE,
            claimed_by="cli:host-1",
            now=services.clock(),
        ).id
    steps = iter(range(10**9))

    def dies_after_two_batches() -> bool:
        if job_of(app, import_id).status is ImportStatus.IMPORTING and next(steps) >= 2:
            raise Died
        return False

    command = imports.ImportRunner(
        services.database,
        worker="cli:host-1",
        default_time_zone="UTC",
        clock=services.clock,
        should_stop=dies_after_two_batches,
        command_line=True,
    )
    command.run(import_id)
    with services.database.begin() as session:
        imports.start_import(
            session,
            import_id,
            mode=importer.Mode.CONFIRMED,
            consent_text=CONSENT,
            join_sequence=False,
            sequence=services.default_sequence.name,
            claimed_by="cli:host-1",
            now=services.clock(),
        )
    with contextlib.suppress(Died):
        command.run(import_id)
    assert job_of(app, import_id).applied["created"] > 0
    clock.advance(seconds=imports.LEASE.total_seconds() + 1)
    scheduler_pass(app)
    job = job_of(app, import_id)
    assert job.status is ImportStatus.FAILED and "nothing was imported" in job.error
    with services.database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsentRecord)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 0
