"""CSV imports: the upload, its checked rows, its progress."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime, _enum


class ImportStatus(enum.StrEnum):
    CHECKING = "checking"  # the file is being read and every row checked
    CHECKED = "checked"  # the preview is ready; waiting for the owner to import it
    IMPORTING = "importing"  # rows are being added, a batch per transaction
    DONE = "done"
    FAILED = "failed"  # the file could not be read (the error says why)
    CANCELLED = "cancelled"


class Import(Base):
    """A CSV import: the uploaded file, its preview, and how far it has got.

    Checked and carried out in batches by whichever process holds its lease (the web
    request for a small file, a scheduler for a large one), so an import of any size
    finishes in flat memory and a process that dies hands it on (service.imports).
    """

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[ImportStatus] = mapped_column(_enum(ImportStatus), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(320))  # the admin's address
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The preview: field -> header, outcome -> rows, the first issues (line, email, why).
    columns: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    issues: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    bytes_read: Mapped[int] = mapped_column(Integer, default=0)
    # What the owner chose when importing, and what has been done so far.
    mode: Mapped[str | None] = mapped_column(String(16))
    consent_text: Mapped[str | None] = mapped_column(Text)
    join_sequence: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)  # added to every row
    applied_line: Mapped[int] = mapped_column(Integer, default=0)  # rows up to it are done
    applied: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ImportChunk(Base):
    """A piece of an uploaded file (up to 1 MB), in the database so that any process can
    read it; deleted when the import ends, or a day after an upload nobody imported."""

    __tablename__ = "import_chunks"

    import_id: Mapped[int] = mapped_column(
        ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImportRow(Base):
    """One checked row of an import, staged between the preview and the import: the table,
    not memory, finds the duplicates of a file of a million rows."""

    __tablename__ = "import_rows"
    __table_args__ = (
        # One row per address per import; rows without an address (invalid, duplicate) are
        # NULL here, which a unique index allows any number of.
        Index("uq_import_rows_import_email_key", "import_id", "email_key", unique=True),
        Index("ix_import_rows_import_line", "import_id", "line"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # importer.Outcome
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320))
    # Worked out when the row is checked, so that importing it is an INSERT ... SELECT:
    # signup_input.mailbox_key, and erasure.suppression_hash (checked again on import).
    mailbox_key: Mapped[str | None] = mapped_column(String(320))
    suppression_hash: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(100))
    time_zone: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(100))
    status: Mapped[str | None] = mapped_column(String(16))
    signed_up: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tags: Mapped[str | None] = mapped_column(Text)  # the row's own, checked, joined by ';'
