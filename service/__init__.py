"""The newsletter service: signup, double opt-in, the lead magnet and the outbox.

`create_app()` reads like a table of contents: settings, services, pages, commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from flask import Flask

from .config import PROJECT_ROOT, load_settings
from .emails import COMPILED_TEMPLATES
from .services import Services, configure_logging

__all__ = ["create_app"]

MAX_REQUEST_BYTES = 64 * 1024


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the web app; `test_config` overrides settings (tests pass a dict)."""
    settings = load_settings(test_config)
    configure_logging(settings)
    services = Services.from_settings(settings)
    settings = services.settings  # with the key it signs with
    app = Flask(
        __name__,
        instance_path=settings.INSTANCE_DIR,
        static_folder=str(PROJECT_ROOT / "static"),
    )
    base = urlsplit(settings.BASE_URL)
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        # Only BASE_URL's host is served: a request for any other Host gets 400, so no
        # redirect or link can be made to point at a host the client chose.
        TRUSTED_HOSTS=[base.hostname],
        # Redirects and external URLs name this host, never the request's.
        SERVER_NAME=base.netloc,
        TESTING=settings.APP_ENV == "testing",
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        RATELIMIT_HEADERS_ENABLED=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.BASE_URL.startswith("https://"),
    )
    page_dirs = [PROJECT_ROOT / "templates" / "pages"]
    if settings.CONTENT_DIR:
        page_dirs.insert(0, Path(settings.CONTENT_DIR) / "pages")
    app.jinja_loader = jinja2.FileSystemLoader([str(d) for d in page_dirs])
    app.jinja_env.undefined = jinja2.StrictUndefined
    app.jinja_env.bytecode_cache = COMPILED_TEMPLATES

    app.extensions["newsletter"] = services
    app.context_processor(lambda: {"site": services.renderer.environment.globals["site"]})

    from . import cli, web

    web.init_app(app)
    cli.init_app(app)
    return app
