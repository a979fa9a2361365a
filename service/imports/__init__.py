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
from collections.abc import Callable
from datetime import datetime

from ..db import Database
from .jobs import (
    ABANDONED_AFTER,
    COMMAND_LINE,
    ENDED,
    LEASE,
    WORKING,
    cancel,
    claim,
    remove_legacy_previews,
    start_import,
    store_upload,
    store_upload_in_pieces,
    sweep,
    waiting,
)
from .runner import INTERRUPTION_PAUSE, MAX_INTERRUPTIONS, ImportRunner
from .undo import take_back

__all__ = [
    "ABANDONED_AFTER",
    "COMMAND_LINE",
    "ENDED",
    "INLINE_BYTES",
    "INTERRUPTION_PAUSE",
    "LEASE",
    "MAX_INTERRUPTIONS",
    "WORKING",
    "ImportRunner",
    "cancel",
    "claim",
    "remove_legacy_previews",
    "start_import",
    "store_upload",
    "store_upload_in_pieces",
    "sweep",
    "take_back",
    "waiting",
    "work",
]

logger = logging.getLogger(__name__)

# Checked and imported inside the web request up to this size; beyond it, by a scheduler,
# while the owner watches its progress page. 64 KB is ~1,300 rows of 50 bytes (~2,600 of
# bare addresses); checked against a list of a million on two cores, it took 0.1 s on
# SQLite and 0.25 s on PostgreSQL, up to 0.3 s and 1.2 s with the cores five times
# oversubscribed (256 KB: 0.3 s and 0.9 s, up to 2.4 s).
INLINE_BYTES = 64 * 1024


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
