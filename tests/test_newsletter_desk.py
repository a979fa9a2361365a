"""The owner's desk for a newsletter: the question before it goes, its progress as JSON for
the page's refresh, the confirmation pages of cancelling and deleting, and the greeting."""

from __future__ import annotations

import pytest

from service import broadcasts
from service.models import Broadcast, BroadcastStatus, OutboxMessage
from tests import test_broadcasts
from tests.helpers import run_pass, services_of
from tests.test_admin import csrf_token
from tests.test_broadcasts import draft, finish, readers, send_now, start, status_of

# The newsletter tests' fixtures: an app mailing to loopback SMTP, and its owner signed in.
app = test_broadcasts.app
owner = test_broadcasts.owner

pytestmark = pytest.mark.slow  # every test signs in (scrypt)


def post(client, path: str, **form):
    token = csrf_token(client, "/admin/newsletters")
    return client.post(path, data={"csrf_token": token, **form})


def outbox_size(app) -> int:
    with services_of(app).database.read() as session:
        return session.query(OutboxMessage).count()


def test_sending_asks_first_naming_how_many_and_sends_nothing(app, owner):
    readers(app, 3)
    broadcast_id = draft(app)
    editor = owner.get(f"/admin/newsletters/{broadcast_id}").get_data(as_text=True)
    assert f'action="/admin/newsletters/{broadcast_id}/confirm-send"' in editor
    response = post(owner, f"/admin/newsletters/{broadcast_id}/confirm-send", when="now")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Send to 3 confirmed readers now?" in page
    assert f'action="/admin/newsletters/{broadcast_id}/send"' in page
    assert "Back to the draft" in page
    assert status_of(app, broadcast_id) is BroadcastStatus.DRAFT
    assert outbox_size(app) == 0
    # Its button sends.
    assert post(owner, f"/admin/newsletters/{broadcast_id}/send", when="now").status_code == 303
    assert status_of(app, broadcast_id) is BroadcastStatus.SCHEDULED


def test_the_question_names_the_narrowing_and_the_owners_time(app, owner):
    readers(app, 2, source="quiz")
    readers(app, 4)
    broadcast_id = draft(app, audience_source="quiz", audience_sequence="finished")
    post(owner, "/admin/account/time-zone", time_zone="Asia/Tokyo")
    page = post(
        owner,
        f"/admin/newsletters/{broadcast_id}/confirm-send",
        when="later",
        send_at="2026-11-26T09:00",
    ).get_data(as_text=True)
    assert "Send to 0 confirmed readers on 2026-11-26 09:00 Asia/Tokyo?" in page
    assert "who came from the source quiz" in page
    assert "who finished the drip sequence" in page
    assert 'name="send_at" value="2026-11-26T09:00"' in page
    assert status_of(app, broadcast_id) is BroadcastStatus.DRAFT
    path = f"/admin/newsletters/{broadcast_id}"
    post(owner, path + "/send", when="later", send_at="2026-11-26T09:00")
    progress = owner.get(path + "/progress.json").get_json()
    assert progress["state"] == "Scheduled for 2026-11-26 09:00 Asia/Tokyo."
    assert progress["recipients_shown"] == "counted when it starts"


def test_progress_says_sending_now_and_counts_as_it_goes(app, owner):
    readers(app, 3)
    broadcast_id = draft(app)
    send_now(app, broadcast_id)
    path = f"/admin/newsletters/{broadcast_id}"
    page = owner.get(path).get_data(as_text=True)
    assert "Sending now" in page and "Scheduled for" not in page
    assert "<dt>Recipients</dt><dd>counting…</dd>" in page
    assert f'data-progress="{path}/progress.json" data-polling' in page
    waiting = owner.get(path + "/progress.json").get_json()
    assert waiting["status"] == "scheduled" and waiting["recipients"] is None
    assert waiting["recipients_shown"] == "counting…"
    assert waiting["state"].startswith("Sending now") and not waiting["done"]
    start(app)
    sending = owner.get(path + "/progress.json").get_json()
    assert (sending["recipients"], sending["remaining"], sending["sent"]) == (3, 3, 0)
    assert run_pass(app).sent == 3
    finish(app)
    sent = owner.get(path + "/progress.json").get_json()
    assert (sent["status"], sent["sent"], sent["remaining"], sent["done"]) == ("sent", 3, 0, True)
    assert "data-polling" not in owner.get(path).get_data(as_text=True)


def test_cancel_the_rest_asks_first_and_names_who_will_not_get_it(app, owner):
    readers(app, 3)
    broadcast_id = draft(app)
    send_now(app, broadcast_id)
    start(app)
    path = f"/admin/newsletters/{broadcast_id}"
    page = owner.get(path).get_data(as_text=True)
    assert f'class="button button-danger" id="cancel-rest" href="{path}/cancel/confirm"' in page
    question = owner.get(path + "/cancel/confirm").get_data(as_text=True)
    assert "3 confirmed readers are still to get" in question
    assert 'class="button-danger">Cancel it for 3 readers' in question
    assert f'action="{path}/cancel"' in question
    assert status_of(app, broadcast_id) is BroadcastStatus.SENDING
    post(owner, path + "/cancel")
    assert status_of(app, broadcast_id) is BroadcastStatus.CANCELLED


def test_a_draft_is_deleted_after_its_confirmation(app, owner):
    broadcast_id = draft(app, subject="Not this one")
    path = f"/admin/newsletters/{broadcast_id}"
    assert f'class="button button-danger" id="delete-draft" href="{path}/delete/confirm"' in (
        owner.get(path).get_data(as_text=True)
    )
    question = owner.get(path + "/delete/confirm").get_data(as_text=True)
    assert "Delete the draft “Not this one”?" in question and "button-danger" in question
    assert owner.get(path).status_code == 200  # asking deleted nothing
    response = post(owner, path + "/delete")
    assert response.status_code == 303 and response.location.endswith("/admin/newsletters")
    assert owner.get(path).status_code == 404


def test_deleting_a_draft_takes_back_its_test_copy_still_waiting(app, owner):
    """A test copy queued for a draft that is gone could never be built: it is cancelled,
    not kept waiting for a fix forever."""
    broadcast_id = draft(app, subject="Not this one")
    path = f"/admin/newsletters/{broadcast_id}"
    post(owner, path + "/test")
    post(owner, path + "/delete")
    report = run_pass(app)
    assert (report.sent, report.retried, report.errors) == (0, 0, [])
    with services_of(app).database.read() as session:
        (copy,) = session.query(OutboxMessage).all()
        assert (copy.status.value, copy.last_error) == ("cancelled", "draft deleted")


def test_a_sent_newsletter_cannot_be_deleted(app, owner):
    readers(app, 1)
    broadcast_id = draft(app)
    send_now(app, broadcast_id)
    path = f"/admin/newsletters/{broadcast_id}"
    assert post(owner, path + "/delete").status_code == 409  # scheduled
    start(app)
    assert post(owner, path + "/delete").status_code == 409  # sending
    with services_of(app).database.begin() as session:
        session.get(Broadcast, broadcast_id).status = BroadcastStatus.SENT
    assert post(owner, path + "/delete").status_code == 409
    assert status_of(app, broadcast_id) is BroadcastStatus.SENT
    with services_of(app).database.begin() as session:
        assert not broadcasts.delete_draft(session, broadcast_id)
    assert owner.get(path + "/delete/confirm").status_code == 303  # no question to ask


def test_the_greeting_is_a_choice_seen_in_the_preview(app, owner):
    path = "/admin/newsletters/new"
    fields = {"subject": "Week two", "body": "Hello friends, **roll** today."}
    post(owner, path, greeting=["", "on"], **fields)
    assert 'id="greeting" name="greeting" checked' in owner.get("/admin/newsletters/1").text
    assert "Hi Alex," in owner.get("/admin/newsletters/1/preview.txt").text
    assert "Hi Alex," in owner.get("/admin/newsletters/1/preview.html").text
    # Unticked, the form sends only the empty field before the box.
    post(owner, "/admin/newsletters/1", greeting="", **fields)
    with services_of(app).database.read() as session:
        assert session.get(Broadcast, 1).greeting is False
    text = owner.get("/admin/newsletters/1/preview.txt").text
    assert "Hi Alex" not in text and "Hello friends, roll today." in text
    assert "Hi Alex" not in owner.get("/admin/newsletters/1/preview.html").text
    assert 'id="greeting" name="greeting">' in owner.get("/admin/newsletters/1").text
