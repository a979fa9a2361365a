"""The web layer: blueprints, the signup rate limit, error pages and security headers.

Views are thin: they parse the request, call one domain function in a unit of work, and
render or redirect. Domain errors become responses in the handlers registered here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, render_template, request
from flask.json.provider import DefaultJSONProvider
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from ..db import Database
from ..services import Services
from ..subscriptions import SupersededToken, UnknownSubscriber
from ..tokens import InvalidToken, Purpose

logger = logging.getLogger(__name__)

# The largest id a table holds: ids are INTEGER, 32 bits on PostgreSQL (64 on SQLite).
MAX_ID = 2**31 - 1

# Endpoints that share one per-address signup budget (SIGNUP_RATE_LIMIT).
SIGNUP_ENDPOINTS = ("public.subscribe", "public.resend", "api.create_subscriber")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)


class DatabaseId(IntegerConverter):
    """`<int:...>` in our routes is always a row id: a number past the largest id is no
    page (404), never a number the database cannot take."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)


class JSONBodies(DefaultJSONProvider):
    """Flask's JSON, but a body nested too deep for the parser is broken JSON (400), like
    any other, rather than a RecursionError."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class ExpiredLink(Exception):
    """A genuine link that is too old; the page offers to send a new one."""

    def __init__(self, purpose: Purpose, token: str) -> None:
        super().__init__(purpose.value)
        self.purpose = purpose
        self.token = token


def services() -> Services:
    """The running app's services (database, tokens, clock...)."""
    return current_app.extensions["newsletter"]


def now():
    """The request's 'now': read once per request, so one request sees one instant."""
    if "now" not in g:
        g.now = services().clock()
    return g.now


def _signup_limit() -> str:
    settings = services().settings
    # Flask-Limiter parses the string before it asks exempt_when; give it a valid one.
    return "1 per second" if settings.signup_limits_disabled else settings.SIGNUP_RATE_LIMIT


def _signup_limit_off() -> bool:
    return services().settings.signup_limits_disabled


def _limit_signups(app: Flask, limiter: Limiter) -> None:
    """One budget per client address shared by every signup endpoint."""
    shared = limiter.shared_limit(_signup_limit, scope="signup", exempt_when=_signup_limit_off)
    for endpoint in SIGNUP_ENDPOINTS:
        app.view_functions[endpoint] = shared(app.view_functions[endpoint])


def wants_json() -> bool:
    return request.path.startswith("/api/")


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    # Links carry tokens; never leak them to other sites through Referer.
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Permissions-Policy", "interest-cohort=(), camera=(), microphone=()")
    if services().settings.BASE_URL.startswith("https://"):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def _error_page(template: str, status: int, **context):
    return render_template(template, **context), status


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidToken)
    @app.errorhandler(UnknownSubscriber)
    def link_invalid(_error):
        return _error_page("link_invalid.html", 404)

    @app.errorhandler(ExpiredLink)
    def link_expired(error: ExpiredLink):
        """Offer a fresh link instead of a dead end."""
        return _error_page("link_expired.html", 410, purpose=error.purpose.value, token=error.token)

    @app.errorhandler(SupersededToken)
    def link_superseded(_error):
        return _error_page("link_superseded.html", 410)

    @app.errorhandler(429)
    def too_many(_error):
        if wants_json():
            return {"error": "Too many signups from your network. Please try again later."}, 429
        return _error_page("too_many.html", 429)

    @app.errorhandler(SecurityError)
    def untrusted_host(_error):
        """A Host other than BASE_URL's: no page (its links would be built for that host)."""
        base = services().settings.BASE_URL
        host = request.environ.get("HTTP_HOST", "")[:100]
        # At most a line a minute: a scanner's requests are not news, but a reverse proxy
        # that does not pass the Host on is the operator's to fix.
        refused = current_app.extensions.setdefault("refused_hosts", {"said": -60.0, "since": 0})
        refused["since"] += 1
        if time.monotonic() - refused["said"] >= 60:
            logger.warning(
                "refused %d request(s) for another host, the last for %r: only BASE_URL's "
                "host is served (%s); behind a reverse proxy, pass the Host header on "
                "(nginx: proxy_set_header Host $host)",
                refused["since"],
                host,
                base,
            )
            refused.update(said=time.monotonic(), since=0)
        return f"This service answers at {base} only.\n", 400, {"Content-Type": "text/plain"}

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if wants_json():
            return {"error": error.description}, error.code
        return _error_page("error.html", error.code or 500, error=error)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return {"error": "Something went wrong on our side."}, 500
        return _error_page("error.html", 500, error=None)


def _configure_rate_limit_storage(app: Flask) -> None:
    """Where the limiter keeps its counters: as RATELIMIT_STORAGE_URI says, or by default
    in a table every process of the service shares (service.web.rate_limits)."""
    from . import rate_limits

    services = services_of(app)
    uri = services.settings.RATELIMIT_STORAGE_URI
    if uri:
        app.config["RATELIMIT_STORAGE_URI"] = uri
        return
    if services.database.dialect == "sqlite":
        path = Path(services.settings.INSTANCE_DIR) / rate_limits.SQLITE_FILE
        database = Database.connect(f"sqlite:///{path}")
        rate_limits.create_sqlite_table(database)
        app.extensions["rate_limit_database"] = database
    else:
        database = services.database
    app.config["RATELIMIT_STORAGE_URI"] = f"{rate_limits.STORAGE_SCHEME}://"
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {"database": database}


def init_app(app: Flask) -> None:
    """Register blueprints, the limiter, error handlers and headers on `app`."""
    from . import admin, api, archive, preferences, public, webhooks

    proxies = services_of(app).settings.TRUSTED_PROXIES
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.url_map.converters["int"] = DatabaseId  # before any route is added
    app.json = JSONBodies(app)
    app.register_blueprint(public.bp)
    app.register_blueprint(preferences.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(archive.bp)
    # One limiter per app: its counters live where RATELIMIT_STORAGE_URI says.
    _configure_rate_limit_storage(app)
    limiter = Limiter(key_func=get_remote_address, app=app)
    _limit_signups(app, limiter)
    admin.init_app(app, limiter)
    _register_error_handlers(app)
    app.after_request(_security_headers)


def services_of(app: Flask) -> Services:
    return app.extensions["newsletter"]
