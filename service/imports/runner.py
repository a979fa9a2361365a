"""Checking and importing one job, a batch per transaction, for as long as the runner
holds it (see service.imports)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from queue import Full, Queue
from typing import Any, TypeVar

from sqlalchemy import select, text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from .. import importer
from ..db import Database
from ..importer import ImportProblem, Outcome, Row
from ..models import Import, ImportChunk, ImportStatus
from . import batch, staging, undo
from .jobs import ENDED, all_or_nothing, delete_staged, end, hold

logger = logging.getLogger("service.imports")

# Rows per transaction, checking and importing: on SQLite each holds the write lock for
# as long as its rows take to write (a signup waits that long at most), ~10 ms a
# thousand rows on an idle core.
BATCH_ROWS = 1000
T = TypeVar("T")
# Interruptions in a row (the database went away, a lock timed out) an import survives
# before it fails for good.
MAX_INTERRUPTIONS = 5
INTERRUPTION_PAUSE = timedelta(minutes=1)


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
        command_line: bool = False,
    ) -> None:
        self.database = database
        # The CLI's runner carries on the all-or-nothing imports it starts; any other
        # runner that gets one (its command died) takes it back instead.
        self.command_line = command_line
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
            orphaned = job is not None and all_or_nothing(job) and not self.command_line
        try:
            if status is ImportStatus.CHECKING:
                self._check(import_id)
            elif status is ImportStatus.IMPORTING and orphaned:
                self._fail(import_id, None)
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
            delete_staged(self.database, import_id, with_the_file=True)
        return status

    def _fail(self, import_id: int, exc: BaseException | None) -> None:
        """End the job as failed (`exc` None: the command importing it died); an
        all-or-nothing import is taken back."""
        with self.database.begin() as session:
            job = hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            why = (
                f"It stopped on an unexpected error ({type(exc).__name__})"
                if exc is not None
                else "The command importing it stopped before it finished"
            )
            added = job.applied.get("created", 0)
            whole = all_or_nothing(job)
            if whole:
                error = f"{why}; nothing was imported ({added} new subscribers taken out again)."
            else:
                error = (
                    f"{why} after {added} new subscribers were added. Import the file again "
                    "to add the rest: those already added are skipped."
                )
            end(job, ImportStatus.FAILED, now=self.clock(), error=error)
        if whole:
            undo.take_back(self.database, import_id)

    def _interrupted(self, import_id: int, exc: BaseException) -> None:
        with self.database.begin() as session:
            job = hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            job.interruptions += 1
            # An all-or-nothing import has its command waiting on it: no second go later.
            if job.interruptions < MAX_INTERRUPTIONS and not all_or_nothing(job):
                # Free for anyone, after a pause for whatever went away to come back.
                job.claimed_by = None
                job.lease_until = self.clock() + INTERRUPTION_PAUSE
                return
        self._fail(import_id, exc)

    def _hand_back(self, import_id: int) -> None:
        """Asked to stop: let the next claimant take the job at once (a check starts over;
        an import goes on from its checkpoint)."""
        with self.database.begin() as session:
            job = hold(session, import_id, self.worker, now=self.clock())
            if job is not None:
                job.claimed_by = job.lease_until = None

    # --- checking ---------------------------------------------------------------------

    def _check(self, import_id: int) -> None:
        with self.database.begin() as session:
            job = hold(session, import_id, self.worker, now=self.clock())
            if job is None:
                return
            job.counts = {outcome.value: 0 for outcome in Outcome}
            job.issues = []
            job.bytes_read = 0
        # From the start, also after a holder died half-way: rows staged then go.
        delete_staged(self.database, import_id, with_the_file=False)
        pieces = _Pieces(self.database, import_id)
        try:
            columns, rows = importer.read_rows(
                importer.decoded_lines(pieces), default_time_zone=self.default_time_zone
            )
            dialect = self.database.engine.dialect
            # Checked and made ready on a thread of their own, ahead of the write
            # transactions (on SQLite the write lock is held only while a batch is written).
            ready = _read_ahead(
                (staging.prepare(dialect, import_id, checked), pieces.bytes_read)
                for checked in _batches(rows, BATCH_ROWS)
            )
            with contextlib.closing(ready):
                for prepared, bytes_read in ready:
                    if self.should_stop():
                        self._hand_back(import_id)
                        return
                    with self.database.begin() as session:
                        job = hold(session, import_id, self.worker, now=self.clock())
                        if job is None:
                            return
                        job.columns = columns
                        staging.stage(session, job, prepared)
                        job.bytes_read = bytes_read
        except ImportProblem as exc:
            with self.database.begin() as session:
                job = hold(session, import_id, self.worker, now=self.clock())
                if job is not None:
                    end(job, ImportStatus.FAILED, now=self.clock(), error=str(exc))
            return
        with self.database.begin() as session:
            job = hold(session, import_id, self.worker, now=self.clock())
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
            now = self.clock()
            # Read, and made ready, before the write transaction: on SQLite the write lock
            # is held only while the batch is written.
            with self.database.read() as session:
                job = session.get(Import, import_id)
                if job is None:
                    return
                staged = batch.read_batch(session, job, size=BATCH_ROWS)
            with self.database.begin() as session:
                job = hold(session, import_id, self.worker, now=now)
                if job is None:
                    return
                if staged is not None and staged.after_line != job.applied_line:
                    continue  # moved on since it was read: read again
                if staged is None:
                    end(job, ImportStatus.DONE, now=now)
                    logger.info("import %d done: %s", import_id, job.applied)
                    return
                done = batch.apply_batch(session, job, staged, now=now)
                before = job.applied.get("created", 0)
                job.applied = {
                    name: job.applied.get(name, 0) + value for name, value in vars(done).items()
                }
                job.applied_line = staged.last_line
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


def _read_ahead(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """`items`, made on a thread of their own at most `depth` ahead of the caller. Checking
    rows is Python and writing them mostly SQLite, which lets go of the GIL while it works:
    on two cores the two overlap. An exception in the thread is raised in the caller."""
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()
    end_of_items = object()

    def put(item: tuple[bool, Any]) -> None:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(item, timeout=0.1)
                return

    def make() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put((True, item))
            put((True, end_of_items))
        except BaseException as exc:  # handed to the caller, who decides
            put((False, exc))

    thread = threading.Thread(target=make, name="import-check", daemon=True)
    thread.start()
    try:
        while True:
            made, item = queue.get()
            if not made:
                raise item
            if item is end_of_items:
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
