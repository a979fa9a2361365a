"""`flask --app wsgi bounces ...`: bounce messages by hand or from the mail server.

`bounces receive` reads one message from standard input, for a Postfix `pipe` transport
or procmail. Its exit status follows sysexits, as Postfix reads it:
  0   recorded, or no bounce (an auto-reply, a delay notice): delivered;
  0   a message it cannot read, too: a copy is kept in INSTANCE_DIR/unparseable-bounces/
      and the path is printed; failing it would make Postfix bounce it back, and junk sent
      to the bounce address has a forged sender (backscatter);
  75  (EX_TEMPFAIL) the database could not take it: Postfix keeps it and tries again.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import click
from flask.cli import AppGroup

from ..feedback.outcomes import Outcome
from ..feedback.retention import unparseable_folder
from .common import services as _services

logger = logging.getLogger(__name__)

EX_TEMPFAIL = 75
MAX_MESSAGE = 50 * 1024 * 1024  # a bounce is small; anything larger is read up to here


@click.group("bounces", cls=AppGroup)
def bounces_group() -> None:
    """Bounces and complaints that arrive as email."""


@bounces_group.command("receive")
def bounces_receive() -> None:
    """Record the bounce or complaint in one message read from standard input."""
    # The parsers and the mailbox (imaplib) are loaded by these commands only, not at the
    # start of every other one.
    from ..feedback.reports import Unparseable, parse

    raw = sys.stdin.buffer.read(MAX_MESSAGE)
    services = _services()
    try:
        reports = parse(raw)
    except Unparseable as exc:
        folder = unparseable_folder(services.settings.INSTANCE_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(raw).hexdigest()[:24]}.eml"
        path.write_bytes(raw)
        click.echo(f"not understood ({exc}); kept in {path}", err=True)
        return
    if not reports:
        click.echo("not a bounce (an auto-reply or a delay notice); nothing recorded")
        return
    now = services.clock()
    try:
        with services.database.begin() as session:
            outcomes = [services.feedback.record(session, r, now=now) for r in reports]
    except Exception as exc:  # the database down, locked, not migrated: let Postfix retry
        logger.exception("bounce not recorded")
        click.echo(f"not recorded, try again later: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    for report, recorded in zip(reports, outcomes, strict=True):
        verb = "already recorded" if recorded.outcome is Outcome.DUPLICATE else "recorded"
        click.echo(
            f"{verb}: {report.type.value} for {report.email or '?'} ({recorded.outcome.value})"
        )


@bounces_group.command("poll")
def bounces_poll() -> None:
    """Read the bounce mailbox (BOUNCE_MAILBOX_URL) once, now."""
    from ..feedback.mailbox import BounceMailbox, MailboxError

    services = _services()
    settings = services.settings
    if not settings.BOUNCE_MAILBOX_URL:
        raise click.ClickException("BOUNCE_MAILBOX_URL is not set")
    try:
        mailbox = BounceMailbox.from_settings(
            settings.BOUNCE_MAILBOX_URL, settings.BOUNCE_MAILBOX_AFTER
        )
        report = mailbox.poll(services.database, services.feedback, now=services.clock())
    except (ValueError, MailboxError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(report))
