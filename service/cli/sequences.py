"""`flask --app wsgi sequence status|pause|resume`: the drip sequences and a reader's place."""

from __future__ import annotations

from datetime import timedelta

import click
from flask.cli import AppGroup
from sqlalchemy import select

from .. import dashboard, sequences
from ..models import Subscriber
from .common import services as _services


@click.group("sequence", cls=AppGroup)
def sequence_group() -> None:
    """The drip sequence."""


@sequence_group.command("status")
def sequence_status() -> None:
    """How many subscribers are at each step, and what is due in the next 24 hours."""
    services = _services()
    sequence = services.default_sequence
    with services.database.read() as session:
        report = dashboard.sequence_status(
            session, sequence, now=services.clock(), window=timedelta(hours=24)
        )
    click.echo(
        f"sequence {sequence.name!r}: {len(sequence.steps)} steps, sent at "
        f"{sequence.send_hour}:00 in each reader's time zone"
    )
    click.echo(f"{'step':<24}{'delay':>9}{'waiting':>9}{'due 24h':>9}{'sent':>9}")
    for row in report.steps:
        flags = (
            " (skipped: no " + ", ".join(sequence.missing_links(row.step)) + ")"
            if sequence.missing_links(row.step)
            else ""
        )
        click.echo(
            f"{row.step.id:<24}{row.step.delay!s:>9}{row.waiting:>9}{row.due_soon:>9}{row.sent:>9}{flags}"
        )
    if report.elsewhere:
        click.echo(f"{report.elsewhere} waiting to be planned (new, or their step left the file)")
    states = ", ".join(f"{state} {count}" for state, count in sorted(report.by_status.items()))
    click.echo(f"subscribers: {states or 'none yet'}")
    click.echo(f"due in the next 24 hours: {report.due_soon}")


def _subscriber_id(address: str) -> int:
    from ..signup_input import email_key

    with _services().database.read() as session:
        subscriber_id = session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == email_key(address.strip()))
        )
    if subscriber_id is None:
        raise click.ClickException(f"no subscriber {address}")
    return subscriber_id


def _change_sequence(address: str, change, *, done: str, not_done: str) -> None:
    services = _services()
    subscriber_id = _subscriber_id(address)
    with services.database.begin() as session:
        changed = change(
            session, subscriber_id, sequence=services.default_sequence.name, now=services.clock()
        )
    click.echo(done if changed else not_done)


@sequence_group.command("pause")
@click.argument("address")
def sequence_pause(address: str) -> None:
    """Hold a subscriber's sequence (a step queued but not sent is taken back)."""
    _change_sequence(
        address,
        sequences.pause,
        done="paused",
        not_done="not paused: the sequence is not running for them",
    )


@sequence_group.command("resume")
@click.argument("address")
def sequence_resume(address: str) -> None:
    """Carry on with the next step, timed from now."""
    _change_sequence(
        address,
        sequences.resume,
        done="resumed",
        not_done="not resumed: the sequence is not paused for them",
    )
