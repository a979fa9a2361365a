"""Signing in and out, the first account (a setup link), the account page, and the
defences around passwords: device cookies (service.web.devices) and attempt budgets
(service.web.attempts)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from ... import admins
from .. import now, services
from ..attempts import AttemptBudget
from ..devices import DEVICE_COOKIE, DEVICE_COOKIE_PATH, DEVICE_LIFETIME, DeviceCookies
from .blueprint import bp, idle_limit, logger


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


def _no_account_yet() -> bool:
    """Whether no one can sign in yet: the page then says how to make the account."""
    with services().database.read() as db:
        return not admins.count(db)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with email and password; while there is no account, how to make one."""
    if request.method == "GET":
        if g.admin is not None:
            return redirect(_safe_next(request.args.get("next")))
        if _no_account_yet():
            return render_template("admin/login.html", no_account=True)
        return render_template("admin/login.html", errors={}, email="")
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
            "admin/login.html",
            errors={"password": "That email and password do not match."},
            email=email,
        ), 401
    attempt.refund()  # the owner signing in costs nothing
    return _signed_in(signed_in.admin_id, signed_in.email, _safe_next(request.args.get("next")))


def _signed_in(admin_id: int, email: str, target: str) -> Response:
    """Start a session for the account in this browser, then go to `target`."""
    with services().database.begin() as db:
        token = admins.start_session(
            db,
            admin_id,
            ip=request.remote_addr,
            user_agent=request.user_agent.string,
            idle=idle_limit(),
            now=now(),
        )
    session.clear()  # nothing from before the sign-in carries over
    session.permanent = True
    session["admin_session"] = token
    return _known_from_now(redirect(target, 303), email)


@bp.route("/setup/<token>", methods=["GET", "POST"])
def setup(token: str):
    """Create the first account through the link `make run` printed, and sign in."""
    try:
        with services().database.read() as db:
            admins.check_setup_token(db, services().tokens, token, now=now())
    except admins.SetupLinkError as exc:
        return _dead_setup_link(exc)
    errors, email = {}, ""
    if request.method == "POST":
        # Each try costs a strength check and a hash: counted like a sign-in from here.
        attempt = _password_attempts().spend(("login-ip", request.remote_addr or ""))
        if attempt is None:
            abort(429)
        email, password = request.form.get("email", ""), request.form.get("password", "")
        if password != request.form.get("password_again", ""):
            errors["password_again"] = "The two passwords are not the same."
        else:
            try:
                with services().database.begin() as db:
                    owner = admins.create_owner(
                        db, services().tokens, token, email, password, now=now()
                    )
                    owner_id, address = owner.id, owner.email
            except admins.SetupLinkError as exc:
                return _dead_setup_link(exc)
            except admins.AdminError as exc:
                errors[exc.field] = str(exc)
            else:
                attempt.refund()
                logger.info("admin account %s created through the setup link", address)
                response = _signed_in(owner_id, address, url_for("admin.dashboard_page"))
                flash("Your account is ready, and you are signed in.")  # after the clear
                return response
    return render_template("admin/setup.html", errors=errors, email=email), 422 if errors else 200


def _dead_setup_link(error: admins.SetupLinkError):
    """What a forged, expired or used setup link gets: why, and what to do instead."""
    status = 404 if error.reason == "forged" else 410
    return render_template("admin/setup_link.html", reason=error.reason), status


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
    if request.method == "GET":
        return _account_page({})
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
    except admins.WrongPassword as exc:
        return _account_page({"current_password": str(exc)})
    except admins.AdminError as exc:
        attempt.refund()  # the current password was right; the new one was not
        return _account_page({"new_password": str(exc)})
    attempt.refund()
    flash("Password changed. Every other session has been signed out.")
    # Other browsers' device cookies end with their sessions; this one stays known.
    return _known_from_now(redirect(url_for("admin.account"), 303), g.admin.email)


@bp.post("/account/time-zone")
def account_time_zone():
    """Show every time on the admin pages in the chosen zone."""
    try:
        with services().database.begin() as db:
            admins.set_time_zone(db, g.admin.id, request.form.get("time_zone", ""))
    except admins.AdminError as exc:
        return _account_page({"time_zone": str(exc)})
    flash("Times on these pages are now shown in the zone you chose.")
    return redirect(url_for("admin.account"), 303)


def _account_page(errors: dict[str, str]):
    """The account page, with what was wrong beside the field it is about (422)."""
    with services().database.read() as db:
        open_sessions = admins.sessions_of(db, g.admin.id, idle=idle_limit(), now=now())
    return render_template(
        "admin/account.html",
        errors=errors,
        open_sessions=open_sessions,
        zones=admins.owner_time_zones(),
        default_zone=services().settings.DEFAULT_TIME_ZONE,
    ), 422 if errors else 200
