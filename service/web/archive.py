"""The public archive's pages: the list, one newsletter, and the Atom feed."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, g, render_template
from sqlalchemy.exc import SQLAlchemyError

from .. import archive
from . import now, services

logger = logging.getLogger(__name__)

bp = Blueprint("archive", __name__)

# How many newsletters the list and the feed show.
LISTED = 200
IN_FEED = 20
ATOM_TYPE = "application/atom+xml; charset=utf-8"


def _has_entries() -> bool:
    """Whether the archive lists anything; asked once per request, and only by a page
    that shows the link. A database that cannot answer hides the link, not the page."""
    if "archive_has_entries" not in g:
        try:
            with services().database.read() as db:
                g.archive_has_entries = archive.has_entries(db)
        except SQLAlchemyError:
            logger.warning("could not tell whether the archive is empty", exc_info=True)
            g.archive_has_entries = False
    return g.archive_has_entries


@bp.app_context_processor
def _archive_link():
    return {"archive_has_entries": _has_entries}


@bp.get("/archive")
def index():
    """Every listed newsletter, newest first."""
    with services().database.read() as db:
        entries = archive.entries(db, limit=LISTED)
    return render_template("archive.html", entries=entries)


@bp.get("/archive/<slug>")
def entry(slug: str):
    """One newsletter as a web page: its own content, nothing about any reader."""
    with services().database.read() as db:
        found = archive.entry(db, slug)
    if found is None:
        abort(404)
    return render_template("archive_entry.html", entry=found)


def _tag_authority() -> str:
    return urlsplit(services().settings.BASE_URL).hostname or "localhost"


@bp.get("/archive.atom")
def feed():
    """The archive as an Atom 1.0 feed."""
    with services().database.read() as db:
        entries = archive.entries(db, limit=IN_FEED)
    updated = max((e.updated for e in entries), default=now())
    body = render_template(
        "archive.atom.xml", entries=entries, updated=updated, authority=_tag_authority()
    )
    return Response(body, content_type=ATOM_TYPE)
