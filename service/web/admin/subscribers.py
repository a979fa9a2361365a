"""The subscriber list, its CSV export, and each subscriber's page and data."""

from __future__ import annotations

import contextlib
import json

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy import select

from ... import audience, erasure, export, sequences, subscriber_record, subscriptions, tags
from ...models import Subscriber
from .. import MAX_ID, now, services
from .blueprint import bp, logger
from .clock import owner_zone


def _filter() -> audience.SubscriberFilter:
    try:
        return audience.SubscriberFilter.parse(
            request.args, sequence=services().default_sequence.name, zone=owner_zone()
        )
    except audience.InvalidFilter as exc:
        abort(400, description=str(exc))


@bp.get("/subscribers")
def subscribers():
    """Search and filter the list, newest first, a page at a time."""
    wanted = _filter()
    before = request.args.get("before", type=int)
    if before is not None and not 0 < before <= MAX_ID:
        abort(400, description="That page does not exist.")
    with services().database.read() as db:
        page = audience.find(db, wanted, before=before)
        matching = audience.count(db, wanted)
        sources = audience.sources(db)
        tags_in_use = tags.in_use(db)
    return render_template(
        "admin/subscribers.html",
        page=page,
        matching=matching,
        count_cap=audience.COUNT_CAP,
        wanted=wanted,
        args=wanted.as_args(),
        sources=sources,
        tags_in_use=tags_in_use,
        statuses=[s.value for s in subscriptions.SubscriberStatus],
        steps=[step.id for step in services().default_sequence.steps],
        first_page=before is None,
    )


@bp.get("/subscribers/export.csv")
def export_csv():
    """The filtered list as CSV, streamed: the first rows leave before the last are read."""
    wanted = _filter()
    bom = request.args.get("bom") == "1"
    stamp = now().strftime("%Y%m%d-%H%M")
    # Which filters, not their values: a search term can be someone's address.
    logger.info("subscriber export by %s, filtered by %s", g.admin.email, sorted(wanted.as_args()))
    pieces = export.export_csv(services().database.read, wanted, bom=bom)
    return Response(
        stream_with_context(_reporting_in(pieces)),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="subscribers-{stamp}.csv"',
            # Proxies must pass it on as it comes, not buffer a million rows.
            "X-Accel-Buffering": "no",
        },
    )


def _reporting_in(pieces):
    """The pieces' bytes, telling the server after each that this worker is busy, not hung:
    under gunicorn (gunicorn.conf.py) a streamed export may outlast the worker timeout."""
    heartbeat = current_app.config.get("WORKER_HEARTBEAT")
    with contextlib.closing(pieces):  # a client gone mid-download stops the reading
        for piece in pieces:
            if piece.data:
                yield piece.data
            if heartbeat is not None:
                heartbeat()


def _history(subscriber_id: int) -> subscriber_record.History:
    with services().database.read() as db:
        record = subscriber_record.history(db, subscriber_id)
        if record is None:
            abort(404, description="No such subscriber (or they were erased).")
        db.expunge_all()
    return record


@bp.get("/subscribers/<int:subscriber_id>")
def subscriber(subscriber_id: int):
    """One subscriber's history, and what the owner can do about them."""
    record = _history(subscriber_id)
    return render_template(
        "admin/subscriber.html",
        record=record,
        sequences=services().sequences,
        now=now(),
    )


@bp.get("/subscribers/<int:subscriber_id>/data.json")
def subscriber_data(subscriber_id: int):
    """Everything held about the subscriber, as a JSON file (a GDPR access request)."""
    data = subscriber_record.personal_data(_history(subscriber_id))
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"'},
    )


@bp.post("/subscribers/<int:subscriber_id>/<any(pause, resume):action>")
def sequence_action(subscriber_id: int, action: str):
    """Pause or resume one of the subscriber's drip sequences (the default one when the
    form names none)."""
    change = {"pause": sequences.pause, "resume": sequences.resume}[action]
    name = request.form.get("sequence") or services().default_sequence.name
    if name not in services().sequences:
        abort(404, description="No such sequence.")
    with services().database.begin() as db:
        done = change(db, subscriber_id, sequence=name, now=now())
    flash(
        f"Sequence {action}d."
        if done
        else f"Nothing to {action}: the sequence is not "
        f"{'running' if action == 'pause' else 'paused'}."
    )
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


@bp.post("/subscribers/<int:subscriber_id>/tags")
def tag_add(subscriber_id: int):
    """Tag the subscriber (the owner's own tags: a topic, vip, ...)."""
    with services().database.begin() as db:
        if db.get(Subscriber, subscriber_id) is None:
            abort(404)
        try:
            added = tags.add_by_owner(db, subscriber_id, request.form.get("tag", ""), now=now())
        except tags.InvalidTag as exc:
            flash(f"Not tagged: {exc}.")
        else:
            flash("Tagged." if added else "They already carry that tag.")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


@bp.post("/subscribers/<int:subscriber_id>/tags/remove")
def tag_remove(subscriber_id: int):
    """Take a tag off the subscriber."""
    with services().database.begin() as db:
        if db.get(Subscriber, subscriber_id) is None:
            abort(404)
        removed = tags.remove_by_owner(db, subscriber_id, request.form.get("tag", ""), now=now())
    flash("Tag removed." if removed else "They did not carry that tag.")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


def _ask_about(subscriber_id: int, template: str, endpoint: str, **page: object):
    """A destructive action's question about one subscriber; `title` and `consequences`
    may name them as {email}. Only their address is read, not their whole history."""
    with services().database.read() as db:
        email = db.scalar(select(Subscriber.email).where(Subscriber.id == subscriber_id))
    if email is None:
        abort(404, description="No such subscriber (or they were erased).")
    return render_template(
        template,
        title=str(page.pop("title")).format(email=email),
        consequences=[line.format(email=email) for line in page.pop("consequences")],
        action=url_for(endpoint, subscriber_id=subscriber_id),
        back=url_for("admin.subscriber", subscriber_id=subscriber_id),
        back_label=f"No, back to {email}",
        **page,
    )


@bp.get("/subscribers/<int:subscriber_id>/unsubscribe/confirm")
def unsubscribe_confirm(subscriber_id: int):
    """What unsubscribing them does, and the button that does it; nothing changes yet."""
    return _ask_about(
        subscriber_id,
        "admin/confirm_action.html",
        "admin.unsubscribe",
        title="Unsubscribe {email}?",
        consequences=[
            "{email} gets no more emails from you: no newsletter, no step of a sequence.",
            "Their history and consent record stay; they can sign up again themselves.",
        ],
        button="Unsubscribe them",
    )


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
def unsubscribe(subscriber_id: int):
    """Unsubscribe on the subscriber's behalf (they asked by reply, say)."""
    with services().database.begin() as db:
        done = subscriptions.unsubscribe(db, subscriber_id, via="admin", now=now())
    if done is None:
        abort(404)
    flash("Unsubscribed. Nothing more will be sent to them.")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


@bp.get("/subscribers/<int:subscriber_id>/erase/confirm")
def erase_confirm(subscriber_id: int):
    """What erasing them does, with the address to type out; nothing changes yet."""
    return _ask_about(
        subscriber_id,
        "admin/confirm_erase.html",
        "admin.erase",
        title="Erase {email}?",
        consequences=[
            "Everything held about {email} is deleted for good: their address, name, "
            "history, consent record, emails and tags. It cannot be undone.",
            "Only a one-way hash of the address is kept, so that an import never adds them again.",
        ],
        button="Erase them",
    )


@bp.post("/subscribers/<int:subscriber_id>/erase")
def erase(subscriber_id: int):
    """Erase every personal detail (GDPR); asks for the address typed out as confirmation."""
    with services().database.begin() as db:
        subscriber = db.get(Subscriber, subscriber_id)
        if subscriber is None:
            abort(404)
        typed = request.form.get("confirm_email", "").strip().lower()
        if typed != subscriber.email_key:
            flash("Not erased: type the subscriber's email address to confirm.")
            return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)
        erasure.erase(db, subscriber_id, now=now())
    logger.info("a subscriber was erased by %s", g.admin.email)
    flash("Erased. Only a one-way hash of the address is kept, so they are never re-imported.")
    return redirect(url_for("admin.subscribers"), 303)
