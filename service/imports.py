"""Import jobs: an uploaded CSV file checked, then imported, a batch at a time, by whichever
process holds the job's lease, in flat memory whatever the file's size.

An upload is stored in the database in 1 MB pieces (any process can read it, no file is
left on a disk) as an import CHECKING. Checking reads the pieces as a stream, checks each
row (service.importer) and stages it in `import_rows`, where a unique index, not memory,
finds the duplicates; the preview's figures and first issues build up on the job. When the
owner has chosen how to import, the job goes IMPORTING: each batch of staged rows is
compared with the list afresh (someone may have signed up, or been erased, since the
preview) and imported in a transaction of its own that also moves the job's checkpoint,
so a process that dies hands the job on to the next claimant with no row done twice.

A small file is checked and imported by the web request itself (`INLINE_BYTES`); a large
one by a scheduler (`work`). The rows and the file are deleted when the job ends, and a
job left unimported for a day is cancelled and deleted with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from typing import BinaryIO

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from . import importer, subscriptions
from .db import Database, insert_row
from .importer import ImportProblem, Outcome, Row
from .models import Import, ImportChunk, ImportRow, ImportStatus, SubscriberStatus

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
BATCH_ROWS = 2000
# Checked and imported inside the web request up to this size (about 5,000 rows: half a
# second to check, two to import); beyond it, by a scheduler while the owner watches.
INLINE_BYTES = 256 * 1024
LEASE = timedelta(minutes=5)
ABANDONED_AFTER = timedelta(days=1)
DELETE_BATCH = 20_000
WORKING = (ImportStatus.CHECKING, ImportStatus.IMPORTING)
ENDED = (ImportStatus.DONE, ImportStatus.FAILED, ImportStatus.CANCELLED)
STAGED = (Outcome.NEW, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SKIPPED)


def store_upload(
    session: Session,
    stream: BinaryIO,
    *,
    filename: str,
    created_by: str,
    claimed_by: str | None,
    now: datetime,
) -> Import:
    """A new import holding the file read from `stream` a piece at a time; ImportProblem if
    it is over the limit. `claimed_by` takes the job at once (the web request that checks
    a small file itself); None leaves it to a scheduler."""
    job = Import(
        status=ImportStatus.CHECKING,
        filename=filename[:255] or "upload.csv",
        size_bytes=0,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        columns={},
        counts={},
        issues=[],
        bytes_read=0,
        join_sequence=False,
        applied_line=0,
        applied={},
        claimed_by=claimed_by,
        lease_until=now + LEASE if claimed_by else None,
    )
    session.add(job)
    session.flush()
    size = seq = 0
    while piece := stream.read(CHUNK_BYTES):
        size += len(piece)
        if size > importer.MAX_IMPORT_BYTES:
            raise ImportProblem(
                f"The file is larger than {importer.MAX_IMPORT_BYTES // 1_000_000} MB. Split it "
                "and import the parts."
            )
        insert_row(session, ImportChunk.__table__, {"import_id": job.id, "seq": seq, "data": piece})
        seq += 1
    job.size_bytes = size
    return job


def start_import(
    session: Session,
    import_id: int,
    *,
    mode: importer.Mode,
    consent_text: str,
    join_sequence: bool,
    sequence: str,
    claimed_by: str | None,
    now: datetime,
) -> Import | None:
    """The owner's go-ahead for a checked import; None if it is not waiting for one (done,
    cancelled, or gone). ImportProblem without a consent statement."""
    consent_text = " ".join(consent_text.split())
    if not consent_text:
        raise ImportProblem("Say where these people gave their consent; it is kept as proof.")
    job = session.get(Import, import_id, with_for_update=True)
    if job is None or job.status is not ImportStatus.CHECKED:
        return None
    job.status = ImportStatus.IMPORTING
    job.mode = mode.value
    job.consent_text = consent_text
    job.join_sequence = join_sequence
    job.sequence = sequence
    job.claimed_by = claimed_by
    job.lease_until = now + LEASE if claimed_by else None
    job.updated_at = now
    return job


def cancel(session: Session, import_id: int, *, now: datetime) -> bool:
    """Stop an import that has not ended (a batch in flight still finishes)."""
    job = session.get(Import, import_id, with_for_update=True)
    if job is None or job.status in ENDED:
        return False
    _end(job, ImportStatus.CANCELLED, now=now)
    return True


def _end(job: Import, status: ImportStatus, *, now: datetime, error: str | None = None) -> None:
    job.status = status
    job.error = error
    job.finished_at = job.updated_at = now
    job.claimed_by = job.lease_until = None
    job.issues = []  # they name people; the figures stay


def claim(session: Session, worker: str, *, now: datetime) -> int | None:
    """Take the oldest import that needs work and that nobody holds (or whose holder's
    lease ran out); its id, or None."""
    candidates = (
        select(Import.id)
        .where(
            Import.status.in_(WORKING),
            or_(Import.lease_until.is_(None), Import.lease_until < now),
        )
        .order_by(Import.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    import_id = session.scalar(candidates)
    if import_id is None:
        return None
    session.execute(
        update(Import)
        .where(Import.id == import_id)
        .values(claimed_by=worker, lease_until=now + LEASE)
        .execution_options(synchronize_session=False)
    )
    return import_id


def _hold(session: Session, import_id: int, worker: str, *, now: datetime) -> Import | None:
    """The job, its lease renewed, if `worker` still holds it and it still needs work."""
    job = session.get(Import, import_id, with_for_update=True)
    if job is None or job.claimed_by != worker or job.status not in WORKING:
        return None
    job.lease_until = now + LEASE
    job.updated_at = now
    return job


class ImportRunner:
    """Checks or imports one job, a batch per transaction, for as long as it holds it."""

    def __init__(
        self,
        database: Database,
        *,
        worker: str,
        default_time_zone: str,
        clock: Callable[[], datetime],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.database = database
        self.worker = worker
        self.default_time_zone = default_time_zone
        self.clock = clock
        self.should_stop = should_stop

    def run(self, import_id: int) -> ImportStatus | None:
        """Carry the job on until it waits for the owner, ends, or is lost; its status."""
        with self.database.read() as session:
            job = session.get(Import, import_id)
            status = job.status if job else None
        if status is ImportStatus.CHECKING:
            self._check(import_id)
        elif status is ImportStatus.IMPORTING:
            self._import(import_id)
        with self.database.begin() as session:
            job = session.get(Import, import_id)
            if job is None:
                return None
            if job.status in ENDED:
                _purge(session, import_id)
            return job.status

    # --- checking ---------------------------------------------------------------------

    def _check(self, import_id: int) -> None:
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            # From the start, also after a holder died half-way: rows staged then go.
            session.execute(delete(ImportRow).where(ImportRow.import_id == import_id))
            job.counts = {outcome.value: 0 for outcome in Outcome}
            job.issues = []
            job.bytes_read = 0
        pieces = _Pieces(self.database, import_id)
        try:
            columns, rows = importer.read_rows(
                importer.decoded_lines(pieces), default_time_zone=self.default_time_zone
            )
            for batch in _batches(rows, BATCH_ROWS):
                if self.should_stop():
                    return  # the lease runs out and another process starts again
                with self.database.begin() as session:
                    job = _hold(session, import_id, self.worker, now=self.clock())
                    if job is None:
                        return
                    job.columns = columns
                    _stage(session, job, batch)
                    job.bytes_read = pieces.bytes_read
        except ImportProblem as exc:
            with self.database.begin() as session:
                job = _hold(session, import_id, self.worker, now=self.clock())
                if job is not None:
                    _end(job, ImportStatus.FAILED, now=self.clock(), error=str(exc))
            return
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is not None:
                job.columns = columns
                job.bytes_read = job.size_bytes
                job.status = ImportStatus.CHECKED
                job.claimed_by = job.lease_until = None

    # --- importing --------------------------------------------------------------------

    def _import(self, import_id: int) -> None:
        while not self.should_stop():
            with self.database.begin() as session:
                now = self.clock()
                job = _hold(session, import_id, self.worker, now=now)
                if job is None:
                    return
                staged = session.scalars(
                    select(ImportRow)
                    .where(
                        ImportRow.import_id == import_id,
                        ImportRow.line > job.applied_line,
                        ImportRow.outcome.in_([Outcome.NEW.value, Outcome.UPDATED.value]),
                    )
                    .order_by(ImportRow.line)
                    .limit(BATCH_ROWS)
                ).all()
                if not staged:
                    _end(job, ImportStatus.DONE, now=now)
                    logger.info("import %d done: %s", import_id, job.applied)
                    return
                plan = importer.Plan(rows=[_row(row) for row in staged])
                # Afresh: people may have signed up, or been erased, since the preview.
                importer.compare_with_the_list(session, plan.rows)
                done = importer.apply_plan(
                    session,
                    plan,
                    consent_text=job.consent_text or "",
                    mode=importer.Mode(job.mode),
                    join_sequence=job.join_sequence,
                    sequence=job.sequence or "",
                    now=now,
                )
                job.applied = {
                    name: job.applied.get(name, 0) + value for name, value in vars(done).items()
                }
                job.applied_line = staged[-1].line


def _row(staged: ImportRow) -> Row:
    return Row(
        line=staged.line,
        outcome=Outcome.NEW,
        email=staged.email,
        first_name=staged.first_name,
        time_zone=staged.time_zone,
        source=staged.source,
        status=SubscriberStatus(staged.status) if staged.status else None,
        signed_up=staged.signed_up,
        confirmed=staged.confirmed,
        unsubscribed=staged.unsubscribed,
    )


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    rows = iter(rows)
    while batch := list(islice(rows, size)):
        yield batch


class _Pieces:
    """The uploaded file's pieces, each read in a short transaction of its own."""

    def __init__(self, database: Database, import_id: int) -> None:
        self.database = database
        self.import_id = import_id
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        seq = 0
        while True:
            with self.database.read() as session:
                piece = session.scalar(
                    select(ImportChunk.data).where(
                        ImportChunk.import_id == self.import_id, ImportChunk.seq == seq
                    )
                )
            if piece is None:
                return
            self.bytes_read += len(piece)
            seq += 1
            yield bytes(piece)


def _stage(session: Session, job: Import, rows: list[Row]) -> None:
    """Find the batch's duplicates (in the batch, then among the rows staged before), say
    what would happen to the rest, stage them all, and add them to the preview."""
    first_seen: dict[str, int] = {}
    for row in rows:
        if row.outcome is not Outcome.NEW:
            continue
        key = subscriptions.email_key(row.email)
        if key in first_seen:
            row.outcome = Outcome.DUPLICATE
            row.reason = f"the same address as line {first_seen[key]}"
        else:
            first_seen[key] = row.line
    keys = list(first_seen)
    earlier: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        for key, line in session.execute(
            select(ImportRow.email_key, ImportRow.line).where(
                ImportRow.import_id == job.id, ImportRow.email_key.in_(keys[start : start + 500])
            )
        ):
            earlier[key] = line
    for row in rows:
        line = (
            earlier.get(subscriptions.email_key(row.email)) if row.outcome is Outcome.NEW else None
        )
        if line is not None:
            row.outcome = Outcome.DUPLICATE
            row.reason = f"the same address as line {line}"
    importer.compare_with_the_list(session, [row for row in rows if row.outcome is Outcome.NEW])
    session.execute(
        ImportRow.__table__.insert(),
        [
            {
                "import_id": job.id,
                "line": row.line,
                "outcome": row.outcome.value,
                "email": row.email,
                "email_key": subscriptions.email_key(row.email) if row.outcome in STAGED else None,
                "first_name": row.first_name,
                "time_zone": row.time_zone,
                "source": row.source,
                "status": row.status.value if row.status else None,
                "signed_up": row.signed_up,
                "confirmed": row.confirmed,
                "unsubscribed": row.unsubscribed,
            }
            for row in rows
        ],
    )
    counts = dict(job.counts)
    for row in rows:
        counts[row.outcome.value] = counts.get(row.outcome.value, 0) + 1
    job.counts = counts
    room = importer.MAX_ISSUES_SHOWN - len(job.issues)
    problems = (Outcome.INVALID, Outcome.DUPLICATE, Outcome.SKIPPED)
    found = [
        {"line": row.line, "email": row.email, "outcome": row.outcome.value, "reason": row.reason}
        for row in rows
        if row.outcome in problems
    ]
    if room > 0 and found:
        job.issues = [*job.issues, *found[:room]]


def _purge(session: Session, import_id: int) -> None:
    """Delete an ended import's file and staged rows (they hold personal data)."""
    session.execute(delete(ImportChunk).where(ImportChunk.import_id == import_id))
    session.execute(delete(ImportRow).where(ImportRow.import_id == import_id))


def _abandoned(now: datetime):
    return or_(
        Import.status == ImportStatus.CHECKED,
        Import.status.in_(WORKING) & Import.lease_until.is_(None),
    ) & (Import.updated_at < now - ABANDONED_AFTER)


def _leftovers():
    """Ended imports that still hold their file or staged rows."""
    return Import.status.in_(ENDED) & (
        select(ImportChunk.seq).where(ImportChunk.import_id == Import.id).exists()
        | select(ImportRow.id).where(ImportRow.import_id == Import.id).exists()
    )


def sweep(database: Database, *, now: datetime) -> int:
    """Cancel imports nobody went on with for a day, and delete what ended imports left
    (a few thousand rows per transaction); returns how many imports were cancelled. Only
    reads when there is nothing to do."""
    with database.read() as session:
        due = session.scalar(select(Import.id).where(_abandoned(now) | _leftovers()).limit(1))
    if due is None:
        return 0
    with database.begin() as session:
        stale = session.scalars(select(Import).where(_abandoned(now))).all()
        for job in stale:
            _end(job, ImportStatus.CANCELLED, now=now)
            logger.info("import %d cancelled: nobody went on with it for a day", job.id)
        ended = select(Import.id).where(Import.status.in_(ENDED))
        session.execute(delete(ImportChunk).where(ImportChunk.import_id.in_(ended)))
    while True:
        with database.begin() as session:
            batch = (
                select(ImportRow.id)
                .where(ImportRow.import_id.in_(select(Import.id).where(Import.status.in_(ENDED))))
                .limit(DELETE_BATCH)
            )
            if not session.execute(delete(ImportRow).where(ImportRow.id.in_(batch))).rowcount:
                return len(stale)


def work(
    database: Database,
    *,
    worker: str,
    default_time_zone: str,
    clock: Callable[[], datetime],
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """What a scheduler does for imports each tick: every import that needs work and that
    nobody holds, one after the other, then the sweep; returns how many it worked on."""
    runner = ImportRunner(
        database,
        worker=worker,
        default_time_zone=default_time_zone,
        clock=clock,
        should_stop=should_stop,
    )
    worked = 0
    with database.read() as session:
        pending = waiting(session)
    while pending and not should_stop():
        with database.begin() as session:
            import_id = claim(session, worker, now=clock())
        if import_id is None:
            break
        status = runner.run(import_id)
        worked += 1
        logger.info("import %d: %s", import_id, status.value if status else "gone")
    sweep(database, now=clock())
    return worked


def waiting(session: Session) -> bool:
    """Whether any import needs a worker (a read: a tick with none takes no write lock)."""
    return bool(
        session.scalar(select(func.count()).select_from(Import).where(Import.status.in_(WORKING)))
    )
