"""The subscriber list's count of matches, and the pages that confirm a destructive action:
they name what will happen and to whom, and change nothing until their POST."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from service import audience
from service.models import Import, ImportStatus, SubscriberStatus
from tests.conftest import START
from tests.helpers import get_subscriber, make_subscriber, services_of
from tests.test_admin import admin_client, confirmed_reader, csrf_token, post  # noqa: F401
from tests.test_imports import csv_of, go_ahead, scheduler_pass, upload

pytestmark = pytest.mark.slow  # every test signs in (scrypt)


def match_count(page: str) -> str:
    return re.sub(r"\s+", " ", re.search(r'<p id="match-count"[^>]*>(.*?)</p>', page, re.S)[1])


def test_the_list_says_how_many_match_the_filters(app, admin_client, monkeypatch):  # noqa: F811
    services = services_of(app)
    with services.database.begin() as session:
        for n in range(12):
            status = SubscriberStatus.CONFIRMED if n < 3 else SubscriberStatus.PENDING
            make_subscriber(session, f"r{n}@example.com", now=START, status=status)
    assert match_count(admin_client.get("/admin/subscribers").get_data(as_text=True)) == (
        "12 subscribers match."
    )
    confirmed = admin_client.get("/admin/subscribers?status=confirmed").get_data(as_text=True)
    assert match_count(confirmed) == "3 subscribers match these filters."
    one = admin_client.get("/admin/subscribers?q=r11%40").get_data(as_text=True)
    assert match_count(one) == "1 subscriber matches these filters."
    # Past the cap the count stops: "more than", written with a thousands separator.
    monkeypatch.setattr(audience, "COUNT_CAP", 1_000)
    with services.database.begin() as session:
        for n in range(12, 1_012):
            make_subscriber(session, f"r{n}@example.com", now=START)
    assert match_count(admin_client.get("/admin/subscribers").get_data(as_text=True)) == (
        "More than 1,000 subscribers match."
    )


def test_unsubscribing_asks_first_and_names_who(app, client, admin_client):  # noqa: F811
    reader_id = confirmed_reader(app, client, "ann@example.com")
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    link = f"/admin/subscribers/{reader_id}/unsubscribe/confirm"
    assert f'class="button button-danger" id="unsubscribe" href="{link}"' in page
    assert f'action="/admin/subscribers/{reader_id}/unsubscribe"' not in page  # no one-click form
    confirm = admin_client.get(link).get_data(as_text=True)
    assert "Unsubscribe ann@example.com?" in confirm
    assert "ann@example.com gets no more emails from you" in confirm
    assert f'action="/admin/subscribers/{reader_id}/unsubscribe"' in confirm
    assert '<button type="submit" class="button-danger">Unsubscribe them</button>' in confirm
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.CONFIRMED
    response = post(admin_client, f"/admin/subscribers/{reader_id}/unsubscribe")
    assert response.status_code == 303
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.UNSUBSCRIBED
    assert admin_client.get("/admin/subscribers/999/unsubscribe/confirm").status_code == 404


def test_erasing_asks_first_with_the_address_typed_out(app, client, admin_client):  # noqa: F811
    reader_id = confirmed_reader(app, client, "bob@example.com")
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    link = f"/admin/subscribers/{reader_id}/erase/confirm"
    assert f'class="button button-danger" id="erase" href="{link}"' in page
    confirm = admin_client.get(link).get_data(as_text=True)
    assert "Erase bob@example.com?" in confirm and "It cannot be undone." in confirm
    assert 'name="confirm_email"' in confirm and ">Erase them</button>" in confirm
    assert get_subscriber(app, "bob@example.com") is not None
    form = confirm[confirm.index('id="confirm-action"') :]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', form)[1])
    response = admin_client.post(
        action, data={"csrf_token": token, "confirm_email": "bob@example.com"}
    )
    assert response.status_code == 303
    assert get_subscriber(app, "bob@example.com") is None


def test_cancelling_an_import_under_way_asks_first_and_says_what_stays(app, admin_client):  # noqa: F811
    import_id = upload(app, csv_of(3))
    scheduler_pass(app)
    services = services_of(app)
    go_ahead(app, import_id)
    with services.database.begin() as session:
        session.get(Import, import_id).applied = {"created": 2}
    page = admin_client.get(f"/admin/imports/{import_id}").get_data(as_text=True)
    link = f"/admin/imports/{import_id}/cancel/confirm"
    assert f'href="{link}"' in page and "button-danger" in page
    confirm = admin_client.get(link).get_data(as_text=True)
    assert "Cancel the import of list.csv?" in confirm
    assert "The 2 new subscribers added so far stay on the list" in confirm
    with services.database.read() as session:
        assert session.scalar(select(Import.status).where(Import.id == import_id)) is (
            ImportStatus.IMPORTING
        )
    post(admin_client, f"/admin/imports/{import_id}/cancel")
    with services.database.read() as session:
        assert session.get(Import, import_id).status is ImportStatus.CANCELLED
    # An import that has ended has nothing to cancel: its page again.
    assert admin_client.get(link).status_code == 303
