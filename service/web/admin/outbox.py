"""The development outbox: every email as its reader gets it (file: and console: only)."""

from __future__ import annotations

from flask import Response, abort, render_template
from sqlalchemy import select

from ...config import DEV_MAIL_SCHEMES
from ...models import OutboxMessage, Subscriber
from .. import now, services
from .blueprint import EMAIL_FRAME_POLICY, bp


def _dev_mail_only() -> None:
    if not services().settings.MAIL_URL.startswith(DEV_MAIL_SCHEMES):
        abort(404, description="The outbox page is there only with the development mail backend.")


def _composed(message_id: int):
    """The outbox row and the email as its reader gets it (composed as dispatch does)."""
    with services().database.read() as db:
        row = db.get(OutboxMessage, message_id)
        if row is None or row.subscriber_id is None:
            abort(404)
        reader = db.get(Subscriber, row.subscriber_id)
        if reader is None:
            abort(404)
        message = services().composer.compose(row, reader, now=now())
        db.expunge_all()
    return row, message


@bp.get("/outbox")
def outbox_list():
    """The latest emails queued and sent (development mail backend only)."""
    _dev_mail_only()
    with services().database.read() as db:
        rows = db.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(100)).all()
        db.expunge_all()
    return render_template("admin/outbox.html", rows=rows)


@bp.get("/outbox/<int:message_id>")
def outbox_email(message_id: int):
    """One email: its headers, its plain text, and its HTML in a sandboxed frame."""
    _dev_mail_only()
    row, message = _composed(message_id)
    return render_template("admin/outbox_email.html", row=row, message=message)


@bp.get("/outbox/<int:message_id>/html")
def outbox_email_html(message_id: int):
    """The HTML part alone, for the frame: no script runs, nothing but images loads."""
    _dev_mail_only()
    _, message = _composed(message_id)
    response = Response(message.html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_FRAME_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
