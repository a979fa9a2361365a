"""`flask --app wsgi subscribers export|import`: the list out as CSV, and CSV files in."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from flask.cli import AppGroup
from sqlalchemy import event

from .. import audience, export, importer, imports
from .. import tags as tag_names
from ..db import Database
from ..models import Import, ImportStatus, SubscriberStatus
from ..services import worker_name
from .common import services as _services


@click.group("subscribers", cls=AppGroup)
def subscribers_group() -> None:
    """The subscriber list."""


@subscribers_group.command("export")
@click.option(
    "--status", type=click.Choice([s.value for s in SubscriberStatus]), help="Only this status."
)
@click.option("--source", default="", help="Only subscribers from this signup source.")
@click.option("--since", help="Signed up on or after this day (YYYY-MM-DD).")
@click.option("--until", help="Signed up on or before this day (YYYY-MM-DD).")
@click.option("--step", default="", help="At this sequence step (or 'finished', 'none').")
@click.option("--query", default="", help="Email or name contains this.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Only readers carrying this tag; repeated: carrying any of them.",
)
@click.option("--bom", is_flag=True, help="Start with a UTF-8 byte order mark (for Excel).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: standard output).",
)
def subscribers_export(
    status: str | None,
    source: str,
    since: str | None,
    until: str | None,
    step: str,
    query: str,
    tags: tuple[str, ...],
    bom: bool,
    output: Path | None,
) -> None:
    """Export subscribers as CSV, oldest first, in flat memory however long the list."""
    services = _services()
    try:
        wanted = audience.SubscriberFilter.parse(
            {
                "status": status,
                "source": source,
                "from": since,
                "to": until,
                "step": step,
                "q": query,
                "tag": list(tags),
            },
            sequence=services.default_sequence.name,
        )
    except audience.InvalidFilter as exc:
        raise click.ClickException(str(exc)) from None
    pieces = export.export_csv(services.database.read, wanted, bom=bom)
    if output is None:
        stream = sys.stdout.buffer  # UTF-8 whatever the terminal's locale says
        for piece in pieces:
            stream.write(piece.data)
        stream.flush()
        return
    count = 0
    partial = output.with_name(output.name + ".partial")
    # Written beside the target and renamed at the end: a failed export leaves no
    # half-written file under the name asked for.
    with partial.open("wb") as file:
        for piece in pieces:
            file.write(piece.data)
            count += piece.rows
    partial.replace(output)
    click.echo(f"{count} subscribers written to {output}", err=True)


@subscribers_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--consent", default="", help="Where these people gave their consent (required).")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in importer.Mode]),
    help="confirmed: they opted in already; confirm: send each a confirmation email.",
)
@click.option("--join-sequence", is_flag=True, help="Confirmed people start the drip sequence.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Add this tag to every reader in the file, new or already on the list (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would happen.")
def subscribers_import(
    file: Path,
    consent: str,
    mode: str | None,
    join_sequence: bool,
    tags: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Import subscribers from a CSV file of any size (up to 50 MB), in flat memory: checked
    first, then imported a batch at a time (each batch whole or not at all, none twice).
    Nothing goes on without the command: Ctrl-C, SIGTERM or a closed terminal cancels it.
    A `tags` column (tags separated by ';' or ',') and --tag add tags; none are removed."""
    try:
        tags_for_all = tag_names.clean_all(tags)
    except tag_names.InvalidTag as exc:
        raise click.BadParameter(str(exc), param_hint="--tag") from None
    services = _services()
    _roomy_page_cache(services.database)
    worker = f"cli:{worker_name()}"
    runner = imports.ImportRunner(
        services.database,
        worker=worker,
        default_time_zone=services.settings.DEFAULT_TIME_ZONE,
        clock=services.clock,
        command_line=True,
    )
    with _signals_as_interrupts():
        try:
            with file.open("rb") as stream:
                import_id = imports.store_upload_in_pieces(
                    services.database,
                    stream,
                    filename=file.name,
                    created_by=imports.COMMAND_LINE,
                    claimed_by=worker,
                    now=services.clock(),
                )
        except importer.ImportProblem as exc:
            raise click.ClickException(f"nothing imported: {exc}") from None
        try:
            done = _check_then_import(
                runner,
                import_id,
                mode=importer.Mode(mode) if mode else None,
                consent=consent,
                join_sequence=join_sequence,
                tags_for_all=tags_for_all,
                dry_run=dry_run,
            )
        except KeyboardInterrupt:
            with services.database.begin() as session:
                imports.cancel(session, import_id, now=services.clock())
                added = session.get(Import, import_id).applied.get("created", 0)
            imports.take_back(services.database, import_id)
            raise click.ClickException(
                f"stopped: the import is cancelled and nothing was imported ({added} new "
                "subscribers taken out again)"
            ) from None
        finally:
            with services.database.begin() as session:  # nothing goes on without the command
                if session.get(Import, import_id).status is ImportStatus.CHECKED:
                    imports.cancel(session, import_id, now=services.clock())
            imports.sweep(services.database, now=services.clock())
    if done is not None:
        click.echo(
            f"imported {done.get('created', 0)} new ({done.get('confirmations_queued', 0)} "
            f"asked to confirm, {done.get('enrolled', 0)} started the sequence), "
            f"{done.get('updated', 0)} updated, {done.get('tagged', 0)} already on the list "
            "given new tags"
        )


def _check_then_import(
    runner: imports.ImportRunner,
    import_id: int,
    *,
    mode: importer.Mode | None,
    consent: str,
    join_sequence: bool,
    tags_for_all: list[str],
    dry_run: bool,
) -> dict[str, int] | None:
    """Check the stored file and print the preview; then, unless it is a dry run, import
    it. What was done, or None for a dry run."""
    services = _services()
    runner.run(import_id)
    with services.database.read() as session:
        job = session.get(Import, import_id)
        session.expunge(job)
    if job.status is ImportStatus.FAILED:
        raise click.ClickException(f"nothing imported: {job.error}")
    click.echo(", ".join(f"{outcome} {job.counts.get(outcome, 0)}" for outcome in importer.Outcome))
    for issue in job.issues:
        click.echo(
            f"line {issue['line']}: {issue['outcome']}: {issue['email']} {issue['reason']}".rstrip()
        )
    if dry_run:
        return None
    if mode is None:
        raise click.UsageError("--mode confirmed or --mode confirm is required")
    try:
        with services.database.begin() as session:
            imports.start_import(
                session,
                import_id,
                mode=mode,
                consent_text=consent,
                join_sequence=join_sequence,
                sequence=services.default_sequence.name,
                claimed_by=runner.worker,
                now=services.clock(),
                tags_for_all=tags_for_all,
            )
    except importer.ImportProblem as exc:
        raise click.ClickException(f"nothing imported: {exc}") from None
    runner.run(import_id)
    with services.database.read() as session:
        job = session.get(Import, import_id)
        session.expunge(job)
    if job.status is ImportStatus.FAILED:
        raise click.ClickException(job.error or "the import failed")
    if job.status is not ImportStatus.DONE:  # handed back half-way: all or nothing
        raise KeyboardInterrupt
    return job.applied


def _roomy_page_cache(database: Database) -> None:
    """Give SQLite a 32 MB page cache (its default is 2 MB) for this command alone: the
    import writes the list's indexes all over, and re-reading their pages from the OS
    cost a quarter of its time."""
    if database.dialect != "sqlite":
        return

    @event.listens_for(database.engine, "checkout")
    def roomy(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if not record.info.get("roomy"):  # once per connection
            dbapi_connection.execute("PRAGMA cache_size=-32768")
            record.info["roomy"] = True


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop the command as Ctrl-C does."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = {
        signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
