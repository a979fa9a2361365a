"""An import's life as a row: the upload stored, the owner's go-ahead, cancelling, claims
and leases, and the sweep that deletes what ended imports and forgotten uploads leave."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from .. import importer, tags
from ..db import Database, insert_row
from ..importer import ImportProblem
from ..models import Import, ImportChunk, ImportRow, ImportStatus

logger = logging.getLogger("service.imports")

CHUNK_BYTES = 1024 * 1024
LEASE = timedelta(minutes=5)
ABANDONED_AFTER = timedelta(days=1)
# Staged rows deleted per transaction: each holds SQLite's write lock while it runs.
DELETE_BATCH = 2_000
WORKING = (ImportStatus.CHECKING, ImportStatus.IMPORTING)
# Who the CLI's uploads are created by: its imports are all or nothing (see
# service.imports.undo), the web's go on from their checkpoint after a failure.
COMMAND_LINE = "cli"
ENDED = (ImportStatus.DONE, ImportStatus.FAILED, ImportStatus.CANCELLED)


def on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


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
        tags=[],
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
        _within_the_limit(size)
        insert_row(session, ImportChunk.__table__, {"import_id": job.id, "seq": seq, "data": piece})
        seq += 1
    job.size_bytes = size
    return job


def _within_the_limit(size: int) -> None:
    if size > importer.MAX_IMPORT_BYTES:
        raise ImportProblem(
            f"The file is larger than {importer.MAX_IMPORT_BYTES // 1_000_000} MB. Split it "
            "and import the parts."
        )


def store_upload_in_pieces(
    database: Database,
    stream: BinaryIO,
    *,
    filename: str,
    created_by: str,
    claimed_by: str | None,
    now: datetime,
) -> int:
    """`store_upload`, a piece per transaction (on SQLite, 50 MB in one would hold the
    write lock for a second or more); the import's id. Nothing is left if it fails."""
    with database.begin() as session:
        empty = io.BytesIO(b"")
        import_id = store_upload(
            session, empty, filename=filename, created_by=created_by, claimed_by=claimed_by, now=now
        ).id
    try:
        size = seq = 0
        while piece := stream.read(CHUNK_BYTES):
            size += len(piece)
            _within_the_limit(size)
            with database.begin() as session:
                insert_row(
                    session,
                    ImportChunk.__table__,
                    {"import_id": import_id, "seq": seq, "data": piece},
                )
            seq += 1
        with database.begin() as session:
            session.execute(update(Import).where(Import.id == import_id).values(size_bytes=size))
    except BaseException:
        with database.begin() as session:
            session.execute(delete(ImportChunk).where(ImportChunk.import_id == import_id))
            session.execute(delete(Import).where(Import.id == import_id))
        raise
    return import_id


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
    tags_for_all: Iterable[str] = (),
) -> Import | None:
    """The owner's go-ahead for a checked import; None if it is not waiting for one (done,
    cancelled, or gone). ImportProblem without a consent statement, or for a tag to add
    to every row that cannot be one."""
    consent_text = " ".join("".join(ch for ch in consent_text if ch.isprintable()).split())
    if not consent_text:
        raise ImportProblem("Say where these people gave their consent; it is kept as proof.")
    try:
        chosen_tags = tags.clean_all(tags_for_all)
    except tags.InvalidTag as exc:
        raise ImportProblem(f"Tags for every row: {exc}.") from None
    job = locked(session, import_id)
    if job is None or job.status is not ImportStatus.CHECKED:
        return None
    job.status = ImportStatus.IMPORTING
    job.mode = mode.value
    job.consent_text = consent_text
    job.join_sequence = join_sequence
    job.sequence = sequence
    job.tags = chosen_tags
    job.claimed_by = claimed_by
    job.lease_until = now + LEASE if claimed_by else None
    job.updated_at = now
    return job


def all_or_nothing(job: Import) -> bool:
    """Whether a failure half-way takes the whole import back (the CLI's)."""
    return job.created_by == COMMAND_LINE


def cancel(session: Session, import_id: int, *, now: datetime, previews_only: bool = False) -> bool:
    """Stop an import that has not ended (a batch in flight still finishes); with
    `previews_only`, only one not yet importing (a file replaced by another upload)."""
    job = locked(session, import_id)
    if job is None or job.status in ENDED:
        return False
    if previews_only and job.status is ImportStatus.IMPORTING:
        return False
    end(job, ImportStatus.CANCELLED, now=now)
    return True


def locked(session: Session, import_id: int) -> Import | None:
    # populate_existing: the row as it is now, even if this session loaded it before.
    return session.get(Import, import_id, with_for_update=True, populate_existing=True)


def end(job: Import, status: ImportStatus, *, now: datetime, error: str | None = None) -> None:
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
    if on_postgresql(session):
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


def hold(session: Session, import_id: int, worker: str, *, now: datetime) -> Import | None:
    """The job, its lease renewed, if `worker` still holds it and it still needs work."""
    job = locked(session, import_id)
    if job is None or job.claimed_by != worker or job.status not in WORKING:
        return None
    job.lease_until = now + LEASE
    job.updated_at = now
    return job


def delete_staged(database: Database, import_id: int, *, with_the_file: bool) -> None:
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
            end(job, ImportStatus.CANCELLED, now=now)
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


def waiting(session: Session) -> bool:
    """Whether any import needs a worker (a read: a tick with none takes no write lock)."""
    return session.scalar(select(Import.id).where(Import.status.in_(WORKING)).limit(1)) is not None
