"""Plain helper functions shared by the tests."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sqlalchemy import select

from service.dispatch import PassReport
from service.models import OutboxMessage, Subscriber


def services_of(app):
    return app.extensions["newsletter"]


def run_pass(app, worker: str = "test-worker") -> PassReport:
    """One dispatch pass at the app's (test) clock, through the app's mail backend."""
    services = services_of(app)
    mailer = services.make_mailer()
    try:
        return services.make_dispatcher(worker).drain(mailer, clock=services.clock)
    finally:
        mailer.close()


def sign_up(client, email: str, **fields: str):
    return client.post("/subscribe", data={"email": email, **fields})


def get_subscriber(app, email: str) -> Subscriber | None:
    with services_of(app).database.read() as session:
        return session.scalar(select(Subscriber).where(Subscriber.email_key == email.casefold()))


def outbox(app) -> list[OutboxMessage]:
    with services_of(app).database.read() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def link_path(text: str, prefix: str) -> str:
    """The path of the first link in `text` whose path starts with `prefix`."""
    for url in re.findall(r"https?://[^\s<>\"]+", text):
        path = urlsplit(url).path
        if path.startswith(prefix):
            return path
    raise AssertionError(f"no {prefix} link in:\n{text}")


def make_subscriber(session, email: str, *, now, status=None, **fields) -> Subscriber:
    """A subscriber row, flushed so it has an id (a plain factory, no signup flow)."""
    from service.models import SubscriberStatus

    subscriber = Subscriber(
        email=email,
        email_key=email.lower(),
        status=status or SubscriberStatus.PENDING,
        time_zone=fields.pop("time_zone", "UTC"),
        source=fields.pop("source", "test"),
        created_at=now,
        **fields,
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def add_pending(app, count: int, *, due_offsets=None) -> None:
    """`count` pending subscribers r0@... r{count-1}@..., each with a confirmation queued
    (due now, or at now + due_offsets[n])."""
    from service import outbox as outbox_module

    services = services_of(app)
    now = services.clock()
    with services.database.begin() as session:
        for n in range(count):
            subscriber = make_subscriber(session, f"r{n}@example.com", now=now)
            due = now + due_offsets[n] if due_offsets else now
            outbox_module.enqueue(
                session, subscriber, kind="confirm", template="confirm", now=now, due_at=due
            )
