"""The owner's desk at /admin: sign-in, the dashboard, subscribers and their data.

Every view here is behind sign-in (`_require_admin`, checked before any view runs) and
every form carries a CSRF token (Flask-WTF, checked before any POST). Pages hold personal
data, so nothing here may be cached.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import select

from .. import (
    admins,
    audience,
    broadcasts,
    dashboard,
    importer,
    imports,
    sequences,
    subscriptions,
)
from .. import outbox as outbox_module
from ..config import DEV_MAIL_SCHEMES
from ..models import (
    Broadcast,
    Import,
    ImportStatus,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from ..services import worker_name
from . import CONTENT_SECURITY_POLICY, MAX_ID, now, services, services_of
from .attempts import AttemptBudget
from .devices import DEVICE_COOKIE, DEVICE_COOKIE_PATH, DEVICE_LIFETIME, DeviceCookies

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")
csrf = CSRFProtect()

# The public policy, plus previews in frames and the editor's autosave (fetch) to here.
ADMIN_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + "; frame-src 'self'; connect-src 'self'"
# Reachable without an admin session.
OPEN_ENDPOINTS = frozenset({"admin.login"})
CHART_WIDTH, CHART_HEIGHT = 720, 200
SERIES = (
    ("signed_up", "Signups"),
    ("confirmed", "Confirmations"),
    ("unsubscribed", "Unsubscribes"),
)


def _idle_limit() -> timedelta:
    return timedelta(hours=services().settings.ADMIN_SESSION_HOURS)


@bp.before_request
def _require_admin():
    """Sign-in first, then the CSRF token of any form sent."""
    token = session.get("admin_session")
    with services().database.read() as db:
        found = admins.for_session(db, token, idle=_idle_limit(), now=now())
        if found is not None:
            db.expunge(found.admin)
    if found is not None and found.stale:
        with services().database.begin() as db:
            admins.touch_session(db, token, now=now())
    g.admin = admin = found.admin if found is not None else None
    if admin is None and request.endpoint not in OPEN_ENDPOINTS:
        session.pop("admin_session", None)
        if request.method == "GET":
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if request.endpoint == "admin.import_upload":
            # The one place a large body is welcome; read before the CSRF check reads it.
            request.max_content_length = importer.MAX_IMPORT_BYTES + 64 * 1024
        csrf.protect()
    return None


@bp.after_request
def _never_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    # Flask-WTF checks that a form posted over https comes from this site by its Referer;
    # the public pages send none at all (their links carry tokens), these send it home only.
    response.headers["Referrer-Policy"] = "same-origin"
    # Email previews carry their own, stricter policy and a sandbox.
    response.headers.setdefault("Content-Security-Policy", ADMIN_CONTENT_SECURITY_POLICY)
    return response


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path inside /admin, never another site."""
    if (
        target
        and target.startswith("/admin")
        and "\\" not in target
        and not any(ch.isspace() or ord(ch) < 32 for ch in target)
    ):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("admin.dashboard_page")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with email and password."""
    if request.method == "GET":
        if g.admin is not None:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("admin/login.html", error=None, email="")
    email = request.form.get("email", "")
    device = _known_device()
    # A browser that signed in to this account before is counted on its own (devices.py);
    # any other attempt per client address and per account.
    buckets = (
        [("login-device", device)]
        if device
        else [("login-ip", request.remote_addr or ""), ("login-account", admins.account_key(email))]
    )
    attempt = _password_attempts().spend(*buckets)
    if attempt is None:
        abort(429)
    with services().database.read() as db:
        signed_in = admins.authenticate(db, email, request.form.get("password", ""))
    if signed_in is None:
        logger.warning(
            "failed admin sign-in from %s%s",
            request.remote_addr,
            " on a known device" if _known_device() else "",
        )
        return render_template(
            "admin/login.html", error="That email and password do not match.", email=email
        ), 401
    attempt.refund()  # the owner signing in costs nothing
    with services().database.begin() as db:
        token = admins.start_session(
            db,
            signed_in.admin_id,
            ip=request.remote_addr,
            user_agent=request.user_agent.string,
            idle=_idle_limit(),
            now=now(),
        )
    session.clear()  # nothing from before the sign-in carries over
    session.permanent = True
    session["admin_session"] = token
    return _known_from_now(redirect(_safe_next(request.args.get("next")), 303), signed_in.email)


def _known_from_now(response: Response, email: str) -> Response:
    """The response, setting this browser's device cookie for the account."""
    response.set_cookie(
        DEVICE_COOKIE,
        _device_cookies().make(admins.account_key(email), now=now()),
        max_age=int(DEVICE_LIFETIME.total_seconds()),
        path=DEVICE_COOKIE_PATH,
        secure=current_app.config["SESSION_COOKIE_SECURE"],
        httponly=True,
        samesite="Strict",
    )
    return response


def _device_cookies() -> DeviceCookies:
    return current_app.extensions["admin_devices"]


def _to_milliseconds(when: datetime) -> datetime:
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _password_attempts() -> AttemptBudget:
    return current_app.extensions["admin_password_attempts"]


def _known_device() -> str | None:
    """The nonce of this browser's device cookie, if it holds one for the account that the
    sign-in form names, made since the account's sessions were last all ended (see
    service.web.devices)."""
    if "known_device" not in g:
        account = admins.account_key(request.form.get("email", ""))
        device = _device_cookies().device(request.cookies.get(DEVICE_COOKIE), account, now=now())
        if device is not None:
            with services().database.read() as db:
                reset = admins.sessions_reset_at(db, account)
            # Both to the millisecond: the browser that ended the sessions was given its new
            # cookie at that very instant, and keeps it.
            if reset is not None and device.issued_at < _to_milliseconds(reset):
                device = None
        g.known_device = device.nonce if device is not None else None
    return g.known_device


@bp.post("/logout")
def logout():
    """Sign out of this browser: the session ends on the server, for every copy of its
    cookie."""
    with services().database.begin() as db:
        admins.end_session(db, session.get("admin_session"))
    session.clear()
    return redirect(url_for("admin.login"), 303)


@bp.post("/sign-out-everywhere")
def sign_out_everywhere():
    """End every session of this account, this one included."""
    with services().database.begin() as db:
        admins.end_all_sessions(db, g.admin.id, now=now())
    session.clear()
    flash("Signed out everywhere. Sign in again to continue.")
    return redirect(url_for("admin.login"), 303)


@bp.route("/account", methods=["GET", "POST"])
def account():
    """Change the password; every other session ends."""
    error = None
    if request.method == "POST":
        # Guessing the current password with a stolen session is guessing a password too.
        attempt = _password_attempts().spend(
            ("login-ip", request.remote_addr or ""), ("password", f"admin:{g.admin.id}")
        )
        if attempt is None:
            abort(429)
        try:
            with services().database.read() as db:
                password_hash = admins.new_password_hash(
                    db,
                    g.admin.id,
                    request.form.get("current_password", ""),
                    request.form.get("new_password", ""),
                )
            with services().database.begin() as db:
                admins.set_password_hash(
                    db, g.admin.id, password_hash, keep=session["admin_session"], now=now()
                )
        except admins.AdminError as exc:
            error = str(exc)
            if not isinstance(exc, admins.WrongPassword):
                attempt.refund()  # the current password was right; the new one was not
        else:
            attempt.refund()
            flash("Password changed. Every other session has been signed out.")
            # Other browsers' device cookies end with their sessions; this one stays known.
            return _known_from_now(redirect(url_for("admin.account"), 303), g.admin.email)
    with services().database.read() as db:
        open_sessions = admins.sessions_of(db, g.admin.id, idle=_idle_limit(), now=now())
    return render_template(
        "admin/account.html", error=error, open_sessions=open_sessions
    ), 422 if error else 200


def _chart(days: list[dashboard.Day]) -> dict:
    """Coordinates for the daily chart, drawn as inline SVG by the template."""
    peak = max([1, *(max(day.counts.values()) for day in days)])
    step = CHART_WIDTH / max(1, len(days) - 1)

    def y(value: int) -> float:
        return round(CHART_HEIGHT - value / peak * CHART_HEIGHT, 1)

    lines = [
        {
            "kind": kind,
            "label": label,
            "points": " ".join(
                f"{round(i * step, 1)},{y(d.counts[kind])}" for i, d in enumerate(days)
            ),
            "total": sum(d.counts[kind] for d in days),
        }
        for kind, label in SERIES
    ]
    ticks = [
        {"x": round(i * step, 1), "label": days[i].day.strftime("%b %d")}
        for i in range(0, len(days), 15)
    ]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "peak": peak,
        "lines": lines,
        "ticks": ticks,
        "days": days,
    }


@bp.get("/")
def dashboard_page():
    """Growth, the funnel, each step's results, and whether mail is flowing."""
    settings = services().settings
    sequence = services().sequence
    with services().database.read() as db:
        days = dashboard.daily_counts(db, now=now())
        funnel = dashboard.funnel(db, sequence=sequence.name)
        steps = dashboard.step_results(db, sequence)
        outbox = dashboard.outbox_health(
            db, now=now(), late_after=timedelta(seconds=settings.SCHEDULER_LATE_SECONDS)
        )
        links = dashboard.link_clicks(db)
    return render_template(
        "admin/dashboard.html",
        chart=_chart(days),
        funnel=funnel,
        steps=steps,
        outbox=outbox,
        links=links,
    )


def _filter() -> audience.SubscriberFilter:
    try:
        return audience.SubscriberFilter.parse(request.args, sequence=services().sequence.name)
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
        sources = audience.sources(db)
    return render_template(
        "admin/subscribers.html",
        page=page,
        wanted=wanted,
        args=wanted.as_args(),
        sources=sources,
        statuses=[s.value for s in subscriptions.SubscriberStatus],
        steps=[step.id for step in services().sequence.steps],
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
    pieces = audience.export_csv(services().database.read, wanted, bom=bom)
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


def _history(subscriber_id: int) -> audience.History:
    with services().database.read() as db:
        record = audience.history(db, subscriber_id)
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
        sequence=services().sequence,
    )


@bp.get("/subscribers/<int:subscriber_id>/data.json")
def subscriber_data(subscriber_id: int):
    """Everything held about the subscriber, as a JSON file (a GDPR access request)."""
    data = audience.personal_data(_history(subscriber_id))
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"'},
    )


@bp.post("/subscribers/<int:subscriber_id>/<any(pause, resume):action>")
def sequence_action(subscriber_id: int, action: str):
    """Pause or resume the subscriber's drip sequence."""
    change = {"pause": sequences.pause, "resume": sequences.resume}[action]
    with services().database.begin() as db:
        done = change(db, subscriber_id, sequence=services().sequence.name, now=now())
    flash(
        f"Sequence {action}d."
        if done
        else f"Nothing to {action}: the sequence is not "
        f"{'running' if action == 'pause' else 'paused'}."
    )
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
def unsubscribe(subscriber_id: int):
    """Unsubscribe on the subscriber's behalf (they asked by reply, say)."""
    with services().database.begin() as db:
        done = subscriptions.unsubscribe(db, subscriber_id, via="admin", now=now())
    if done is None:
        abort(404)
    flash("Unsubscribed. Nothing more will be sent to them.")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), 303)


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
        subscriptions.erase(db, subscriber_id, now=now())
    logger.info("a subscriber was erased by %s", g.admin.email)
    flash("Erased. Only a one-way hash of the address is kept, so they are never re-imported.")
    return redirect(url_for("admin.subscribers"), 303)


# --- import -----------------------------------------------------------------------------


def _import_runner(worker: str) -> imports.ImportRunner:
    return imports.ImportRunner(
        services().database,
        worker=worker,
        default_time_zone=services().settings.DEFAULT_TIME_ZONE,
        clock=services().clock,
    )


def _import_or_404(import_id: int) -> Import:
    with services().database.read() as db:
        job = db.get(Import, import_id)
        if job is None:
            abort(404, description="No such import.")
        db.expunge(job)
    return job


def _import_page(job: Import | None, *, error: str | None = None, status: int = 200):
    return render_template(
        "admin/import.html", job=job, error=error, shown=importer.MAX_ISSUES_SHOWN
    ), status


@bp.errorhandler(413)
def too_large(_error):
    limit = importer.MAX_IMPORT_BYTES // 1_000_000
    return _import_page(
        None,
        error=f"The file is larger than {limit} MB. Split it and import the parts.",
        status=413,
    )


@bp.route("/subscribers/import", methods=["GET", "POST"])
def import_upload():
    """Upload a CSV file and see what importing it would do; nothing is imported yet. A
    small file is checked here and now; a large one by the scheduler, with progress."""
    if request.method == "GET":
        return _import_page(None)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _import_page(None, error="Choose a CSV file.", status=422)
    worker = worker_name()
    try:
        with services().database.begin() as db:
            previous = session.get("import_id")
            if isinstance(previous, int):  # one preview waiting per browser
                imports.cancel(db, previous, now=now(), previews_only=True)
            job = imports.store_upload(
                db,
                upload.stream,
                filename=upload.filename,
                created_by=g.admin.email,
                claimed_by=worker,
                now=now(),
            )
            inline = job.size_bytes <= imports.INLINE_BYTES
            if not inline:
                job.claimed_by = job.lease_until = None  # for the scheduler
            import_id = job.id
    except importer.ImportProblem as exc:
        return _import_page(None, error=str(exc), status=413)
    session["import_id"] = import_id
    logger.info("import %d uploaded by %s (%s)", import_id, g.admin.email, upload.filename)
    if not inline:
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    _import_runner(worker).run(import_id)
    job = _import_or_404(import_id)
    if job.status is ImportStatus.FAILED:
        return _import_page(None, error=job.error, status=422)
    return _import_page(job)


@bp.get("/imports/<int:import_id>")
def import_page(import_id: int):
    """An import's preview, or how far checking or importing it has got."""
    return _import_page(_import_or_404(import_id))


@bp.post("/subscribers/import/apply")
def import_apply():
    """Import the file previewed: a small one here and now, a large one by the scheduler.
    Each batch of rows is imported whole or not at all, and none twice."""
    import_id = request.form.get("import_id", type=int) or session.get("import_id")
    if not isinstance(import_id, int) or not 0 < import_id <= MAX_ID:
        import_id = None
    try:
        mode = importer.Mode(request.form.get("mode", ""))
    except ValueError:
        mode = None
    worker = worker_name()
    try:
        with services().database.begin() as db:
            job = db.get(Import, import_id) if import_id is not None else None
            if job is None or job.status is not ImportStatus.CHECKED:
                job = None
            elif mode is None:
                abort(
                    400,
                    description="Choose whether they are confirmed or get a confirmation email.",
                )
            else:
                job = imports.start_import(
                    db,
                    import_id,
                    mode=mode,
                    consent_text=request.form.get("consent", ""),
                    join_sequence=request.form.get("join_sequence") == "yes",
                    sequence=services().sequence.name,
                    claimed_by=worker,
                    now=now(),
                )
                inline = job is not None and job.size_bytes <= imports.INLINE_BYTES
                if job is not None and not inline:
                    job.claimed_by = job.lease_until = None  # for the scheduler
    except importer.ImportProblem as exc:
        flash(f"Nothing was imported: {exc}")
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    if job is None:
        flash("That import is gone (already done, or another file was uploaded since).")
        return redirect(url_for("admin.import_upload"), 303)
    session.pop("import_id", None)
    logger.info("import %d started by %s", import_id, g.admin.email)
    if not inline:
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    _import_runner(worker).run(import_id)
    done = _import_or_404(import_id).applied
    flash(
        f"Imported {done.get('created', 0)} new subscribers ({done.get('confirmations_queued', 0)}"
        f" asked to confirm, {done.get('enrolled', 0)} started the sequence); "
        f"{done.get('updated', 0)} updated."
    )
    return redirect(url_for("admin.subscribers"), 303)


@bp.post("/imports/<int:import_id>/cancel")
def import_cancel(import_id: int):
    """Stop an import: nothing more of it is checked or imported, and its file is deleted."""
    with services().database.begin() as db:
        cancelled = imports.cancel(db, import_id, now=now())
    flash("Import cancelled; its file is deleted." if cancelled else "That import has ended.")
    return redirect(url_for("admin.import_page", import_id=import_id), 303)


# --- newsletters ------------------------------------------------------------------------


def _sample_email(broadcast_id: int, to: str):
    """The newsletter as a reader called Alex would get it (rendered like the real ones)."""
    row = OutboxMessage(
        id=0,
        kind=broadcasts.TEST_KIND,
        template=broadcasts.TEMPLATE,
        context={"broadcast_id": broadcast_id, "test": True},
        to_address=to,
    )
    reader = outbox_module.Reader(
        id=0, email=to, first_name="Alex", status=SubscriberStatus.CONFIRMED, time_zone="UTC"
    )
    return services().make_dispatcher("preview").compose(row, reader, now=now())


def _broadcast_or_404(db, broadcast_id: int) -> Broadcast:
    broadcast = db.get(Broadcast, broadcast_id)
    if broadcast is None:
        abort(404)
    return broadcast


@bp.get("/newsletters")
def newsletters():
    """Every newsletter, newest first, with how far each has gone."""
    with services().database.read() as db:
        rows = db.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(200)).all()
        progress = broadcasts.progress_of(db, [row.id for row in rows])
        db.expunge_all()
    return render_template("admin/newsletters.html", rows=rows, progress=progress)


@bp.route("/newsletters/new", methods=["GET", "POST"], defaults={"broadcast_id": None})
@bp.route("/newsletters/<int:broadcast_id>", methods=["GET", "POST"])
def newsletter(broadcast_id: int | None):
    """Write or change a draft; see it as readers will; send a test, send or schedule."""
    error = None
    form = request.form
    if request.method == "POST":
        try:
            with services().database.begin() as db:
                saved = broadcasts.save_draft(
                    db,
                    broadcast_id,
                    subject=form.get("subject", ""),
                    body=form.get("body", ""),
                    audience_source=form.get("audience_source", ""),
                    audience_sequence=form.get("audience_sequence", ""),
                    now=now(),
                )
                saved_id = saved.id
        except broadcasts.BroadcastError as exc:
            error = str(exc)
            if request.headers.get("X-Requested-With") == "fetch":
                return {"error": error}, 422
        else:
            if request.headers.get("X-Requested-With") == "fetch":
                return {"saved": saved_id}
            return redirect(url_for("admin.newsletter", broadcast_id=saved_id), 303)
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id) if broadcast_id else None
        recipients = None
        if broadcast is not None:
            recipients = broadcasts.audience_size(db, broadcast, sequence=services().sequence.name)
            progress = broadcasts.progress(db, broadcast.id)
            links = dashboard.link_clicks(db, broadcast_id=broadcast.id)
        else:
            progress = None
            links = []
        sources = audience.sources(db)
        db.expunge_all()
    sample = _sample_email(broadcast.id, g.admin.email) if broadcast else None
    return render_template(
        "admin/newsletter.html",
        broadcast=broadcast,
        values=form if error else None,
        error=error,
        recipients=recipients,
        progress=progress,
        links=links,
        sources=sources,
        sequence_choices=broadcasts.SEQUENCE_CHOICES,
        sample=sample,
        zone=services().settings.DEFAULT_TIME_ZONE,
    ), 422 if error else 200


@bp.get("/newsletters/<int:broadcast_id>/preview.html")
def newsletter_preview(broadcast_id: int):
    """The newsletter's HTML as readers get it, for the preview frame."""
    with services().database.read() as db:
        _broadcast_or_404(db, broadcast_id)
    response = Response(_sample_email(broadcast_id, g.admin.email).html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_FRAME_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/newsletters/<int:broadcast_id>/preview.txt")
def newsletter_preview_text(broadcast_id: int):
    """The plain-text part, for the preview."""
    with services().database.read() as db:
        _broadcast_or_404(db, broadcast_id)
    return Response(_sample_email(broadcast_id, g.admin.email).text, mimetype="text/plain")


@bp.post("/newsletters/<int:broadcast_id>/test")
def newsletter_test(broadcast_id: int):
    """Queue a copy to the signed-in owner; the scheduler sends it within a tick."""
    with services().database.begin() as db:
        broadcast = _broadcast_or_404(db, broadcast_id)
        broadcasts.queue_test(db, broadcast, to=g.admin.email, now=now())
    flash(f"A test copy is on its way to {g.admin.email}.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


def _send_time() -> datetime:
    """When to send: now, or the form's local date and time in the default time zone."""
    if request.form.get("when") != "later":
        return now()
    raw = request.form.get("send_at", "")
    try:
        local = datetime.fromisoformat(raw)
        if local.tzinfo is None:
            local = local.replace(tzinfo=services().settings.default_zone)
        at = local.astimezone(UTC)
    except (ValueError, OverflowError):  # not a date; or 9999-12-31, past what UTC can hold
        abort(400, description="Pick a date and time to send it at.")
    if at - now() > broadcasts.LATEST_SEND:
        abort(400, description="Pick a time within a year from now.")
    return at


@bp.post("/newsletters/<int:broadcast_id>/send")
def newsletter_send(broadcast_id: int):
    """Send now or at a set time; a second click finds it already on its way."""
    at = _send_time()
    with services().database.begin() as db:
        _broadcast_or_404(db, broadcast_id)
        scheduled = broadcasts.schedule(db, broadcast_id, at=at, now=now())
    if not scheduled:
        flash("This newsletter was already sent or scheduled; nothing changed.")
    elif at <= now():
        flash("Sending: the scheduler queues it for every recipient at its next tick.")
    else:
        flash(f"Scheduled for {at.strftime('%Y-%m-%d %H:%M UTC')}.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


@bp.post("/newsletters/<int:broadcast_id>/<any(pause, resume, cancel):action>")
def newsletter_action(broadcast_id: int, action: str):
    """Pause, resume or cancel a newsletter being sent."""
    change = {"pause": broadcasts.pause, "resume": broadcasts.resume, "cancel": broadcasts.cancel}
    with services().database.begin() as db:
        _broadcast_or_404(db, broadcast_id)
        done = change[action](db, broadcast_id, now=now())
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    flash(f"Newsletter {past}." if done else f"Nothing to {action} in its present state.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


# --- the development outbox -----------------------------------------------------------

EMAIL_FRAME_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",  # emails carry their styles inline
        "img-src https: data:",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "sandbox",  # no script and its own origin, even if opened outside the frame
    ]
)


def _dev_mail_only() -> None:
    if not services().settings.MAIL_URL.startswith(DEV_MAIL_SCHEMES):
        abort(404, description="The outbox page is there only with the development mail backend.")


def _composed(message_id: int):
    """The outbox row and the email as its reader gets it (rendered the way dispatch does)."""
    with services().database.read() as db:
        row = db.get(OutboxMessage, message_id)
        if row is None or row.subscriber_id is None:
            abort(404)
        reader = db.get(Subscriber, row.subscriber_id)
        if reader is None:
            abort(404)
        message = services().make_dispatcher("preview").compose(row, reader, now=now())
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


def init_app(app, limiter) -> None:
    """CSRF protection for the admin forms, and the sign-in rate limit."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked in _require_admin
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session's life
    csrf.init_app(app)
    settings = services_of(app).settings
    app.config["DEV_OUTBOX"] = settings.MAIL_URL.startswith(DEV_MAIL_SCHEMES)
    app.permanent_session_lifetime = timedelta(hours=settings.ADMIN_SESSION_HOURS)
    app.extensions["admin_devices"] = DeviceCookies(settings.SECRET_KEY)
    app.extensions["admin_password_attempts"] = AttemptBudget(
        limiter, None if settings.login_limits_disabled else settings.ADMIN_LOGIN_RATE_LIMIT
    )
