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

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import importer, signup_input
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
# Interruptions in a row (the database went away, a lock timed out) an import survives
# before it fails for good.
MAX_INTERRUPTIONS = 5
INTERRUPTION_PAUSE = timedelta(minutes=1)
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
        filename="".join(ch for ch in filename if ch.isprintable())[:255] or "upload.csv",
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
        interruptions=0,
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
    consent_text = " ".join("".join(ch for ch in consent_text if ch.isprintable()).split())
    if not consent_text:
        raise ImportProblem("Say where these people gave their consent; it is kept as proof.")
    job = _locked(session, import_id)
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


def cancel(session: Session, import_id: int, *, now: datetime, previews_only: bool = False) -> bool:
    """Stop an import that has not ended (a batch in flight still finishes); with
    `previews_only`, only one not yet importing (a file replaced by another upload)."""
    job = _locked(session, import_id)
    if job is None or job.status in ENDED:
        return False
    if previews_only and job.status is ImportStatus.IMPORTING:
        return False
    _end(job, ImportStatus.CANCELLED, now=now)
    return True


def _locked(session: Session, import_id: int) -> Import | None:
    # populate_existing: the row as it is now, even if this session loaded it before.
    return session.get(Import, import_id, with_for_update=True, populate_existing=True)


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
    if _on_postgresql(session):
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
    job = _locked(session, import_id)
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
        """Carry the job on until it waits for the owner, ends, is lost, or the runner is
        asked to stop (the job is then handed back); its status."""
        with self.database.read() as session:
            job = session.get(Import, import_id)
            status = job.status if job else None
        try:
            if status is ImportStatus.CHECKING:
                self._check(import_id)
            elif status is ImportStatus.IMPORTING:
                self._import(import_id)
        except (OperationalError, InterfaceError) as exc:
            # The database went away, a lock waited too long: worth another go, from the
            # checkpoint, a few times over.
            logger.warning("import %d interrupted (%s); handed back", import_id, exc)
            self._interrupted(import_id, exc)
        except Exception as exc:
            # A bug, or a row the database refused: going on would fail the same way.
            logger.exception("import %d stopped by an unexpected error", import_id)
            self._fail(import_id, exc)
        with self.database.read() as session:
            job = session.get(Import, import_id)
            status = job.status if job else None
        if status in ENDED:
            _delete_staged(self.database, import_id, with_the_file=True)
        return status

    def _fail(self, import_id: int, exc: BaseException) -> None:
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is not None:
                _end(
                    job,
                    ImportStatus.FAILED,
                    now=self.clock(),
                    error=f"It stopped on an unexpected error ({type(exc).__name__}) after "
                    f"{job.applied.get('created', 0)} new subscribers were added. Import "
                    "the file again to add the rest: those already added are skipped.",
                )

    def _interrupted(self, import_id: int, exc: BaseException) -> None:
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            job.interruptions += 1
            if job.interruptions < MAX_INTERRUPTIONS:
                # Free for anyone, after a pause for whatever went away to come back.
                job.claimed_by = None
                job.lease_until = self.clock() + INTERRUPTION_PAUSE
                return
        self._fail(import_id, exc)

    def _hand_back(self, import_id: int) -> None:
        """Asked to stop: let the next claimant take the job at once (a check starts over;
        an import goes on from its checkpoint)."""
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is not None:
                job.claimed_by = job.lease_until = None

    # --- checking ---------------------------------------------------------------------

    def _check(self, import_id: int) -> None:
        with self.database.begin() as session:
            job = _hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            job.counts = {outcome.value: 0 for outcome in Outcome}
            job.issues = []
            job.bytes_read = 0
        # From the start, also after a holder died half-way: rows staged then go.
        _delete_staged(self.database, import_id, with_the_file=False)
        pieces = _Pieces(self.database, import_id)
        try:
            columns, rows = importer.read_rows(
                importer.decoded_lines(pieces), default_time_zone=self.default_time_zone
            )
            for batch in _batches(rows, BATCH_ROWS):
                if self.should_stop():
                    self._hand_back(import_id)
                    return
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
                job.interruptions = 0
                job.claimed_by = job.lease_until = None
        # The table grew from nothing: planned with fresh figures, importing reads it along
        # its (import, line) index rather than sorting it each batch.
        self._analyze("import_rows")

    def _analyze(self, table: str) -> None:
        """Fresh planner statistics for `table` on PostgreSQL, in a transaction of its own;
        a failure (a statement timeout, say) costs speed, not the import."""
        if self.database.dialect != "postgresql":
            return
        try:
            with self.database.begin() as session:
                session.execute(text(f"ANALYZE {table}"))
        except SQLAlchemyError as exc:
            logger.warning("ANALYZE %s failed (%s); the import goes on", table, exc)

    # --- importing --------------------------------------------------------------------

    def _import(self, import_id: int) -> None:
        while True:
            if self.should_stop():
                self._hand_back(import_id)
                return
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
                before = job.applied.get("created", 0)
                job.applied = {
                    name: job.applied.get(name, 0) + value for name, value in vars(done).items()
                }
                job.applied_line = staged[-1].line
                job.interruptions = 0  # counted in a row
                grown = _doubled(before, job.applied["created"])
            if grown:
                # The list grows as fast as the import goes: without fresh figures,
                # PostgreSQL keeps reading the whole table for each batch's lookup.
                self._analyze("subscribers")


def _doubled(before: int, after: int) -> bool:
    """Whether a count just passed a power of two times a batch (about ten times in a
    million rows)."""
    return after >= BATCH_ROWS and before.bit_length() != after.bit_length()


def _on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


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


def _staged_values(job: Import, row: Row, *, keyed: bool) -> dict:
    return {
        "import_id": job.id,
        "line": row.line,
        "outcome": row.outcome.value,
        "email": row.email,
        "email_key": signup_input.email_key(row.email) if keyed else None,
        "first_name": row.first_name,
        "time_zone": row.time_zone,
        "source": row.source,
        "status": row.status.value if row.status else None,
        "signed_up": row.signed_up,
        "confirmed": row.confirmed,
        "unsubscribed": row.unsubscribed,
    }


def _stage(session: Session, job: Import, rows: list[Row]) -> None:
    """Find the batch's duplicates, say what would happen to the other rows, stage them all,
    and add them to the preview. Duplicates of rows in earlier batches are found by the
    unique index itself (the insert skips them), not by a lookup a planner could get wrong
    on a table that grows by thousands of rows a second."""
    first_seen: dict[str, int] = {}
    for row in rows:
        if row.outcome is not Outcome.NEW:
            continue
        key = signup_input.email_key(row.email)
        if key in first_seen:
            row.outcome = Outcome.DUPLICATE
            row.reason = f"the same address as line {first_seen[key]}"
        else:
            first_seen[key] = row.line
    importer.compare_with_the_list(session, [row for row in rows if row.outcome is Outcome.NEW])
    keyed = [row for row in rows if row.outcome in STAGED]
    if keyed:
        insert = (
            postgresql.insert(ImportRow) if _on_postgresql(session) else sqlite.insert(ImportRow)
        )
        staged = set(
            session.scalars(
                insert.on_conflict_do_nothing(index_elements=["import_id", "email_key"]).returning(
                    ImportRow.line
                ),
                [_staged_values(job, row, keyed=True) for row in keyed],
            )
        )
        earlier = [row for row in keyed if row.line not in staged]
        if earlier:
            first_lines = dict(
                session.execute(
                    select(ImportRow.email_key, ImportRow.line).where(
                        ImportRow.import_id == job.id,
                        ImportRow.email_key.in_(
                            {signup_input.email_key(row.email) for row in earlier}
                        ),
                    )
                ).all()
            )
            for row in earlier:
                row.outcome = Outcome.DUPLICATE
                row.reason = (
                    f"the same address as line {first_lines[signup_input.email_key(row.email)]}"
                )
    unkeyed = [row for row in rows if row.outcome not in STAGED]
    if unkeyed:
        session.execute(
            ImportRow.__table__.insert(), [_staged_values(job, row, keyed=False) for row in unkeyed]
        )
    counts = dict(job.counts)
    for row in rows:
        counts[row.outcome.value] = counts.get(row.outcome.value, 0) + 1
    job.counts = counts
    room = importer.MAX_ISSUES_SHOWN - len(job.issues)
    problems = (Outcome.INVALID, Outcome.DUPLICATE, Outcome.SKIPPED)
    found = [
        {"line": row.line, "email": row.email, "outcome": row.outcome.value, "reason": row.reason}
        for row in sorted(rows, key=lambda row: row.line)
        if row.outcome in problems
    ]
    if room > 0 and found:
        job.issues = [*job.issues, *found[:room]]


def _delete_staged(database: Database, import_id: int, *, with_the_file: bool) -> None:
    """Delete an import's staged rows, and its file if asked (they hold personal data), a
    few thousand rows per transaction: on SQLite a million in one transaction would hold
    the write lock for seconds."""
    if with_the_file:
        with database.begin() as session:
            session.execute(delete(ImportChunk).where(ImportChunk.import_id == import_id))
    while True:
        with database.begin() as session:
            batch = select(ImportRow.id).where(ImportRow.import_id == import_id).limit(DELETE_BATCH)
            if not session.execute(delete(ImportRow).where(ImportRow.id.in_(batch))).rowcount:
                return


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
        # Locked and judged again: the owner may have gone on with one a moment ago.
        stale = session.scalars(
            select(Import)
            .where(_abandoned(now))
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
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


def remove_legacy_previews(instance_dir: Path) -> int:
    """Delete the preview files that versions before import jobs kept in
    INSTANCE_DIR/imports and never removed (none of them can be imported any more)."""
    folder = instance_dir / "imports"
    removed = 0
    if folder.is_dir():
        for path in folder.glob("*.csv"):
            if re.fullmatch(r"[0-9a-f]{32}\.csv", path.name):  # the old previews' names only
                path.unlink(missing_ok=True)
                removed += 1
        with contextlib.suppress(OSError):
            folder.rmdir()
    if removed:
        logger.info("removed %d import previews left in %s by an earlier version", removed, folder)
    return removed


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
