"""Importing subscribers from CSV: the preview, broken files, all-or-nothing, round trips."""

from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa

from service import erasure, export, importer, sequences
from service.models import (
    ConsentRecord,
    Enrollment,
    Event,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers import get_subscriber, make_subscriber, outbox, services_of
from tests.test_admin import admin_client, csrf_token  # noqa: F401

CONSENT = "Signed up on the old blog form, 2024-2026"


def plan_for(app, text: str | bytes) -> importer.Plan:
    data = text.encode() if isinstance(text, str) else text
    services = services_of(app)
    with services.database.read() as session:
        return importer.read_plan(session, data, default_time_zone="Europe/Berlin")


def apply(app, text: str, mode=importer.Mode.CONFIRMED, join_sequence=False, consent=CONSENT):
    services = services_of(app)
    with services.database.begin() as session:
        plan = importer.read_plan(session, text.encode(), default_time_zone="Europe/Berlin")
        return importer.apply_plan(
            session,
            plan,
            consent_text=consent,
            mode=mode,
            join_sequence=join_sequence,
            sequence=services.default_sequence.name,
            now=services.clock(),
        )


def count(app, model) -> int:
    with services_of(app).database.read() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_the_preview_says_what_happens_to_every_row(app):
    services = services_of(app)
    with services.database.begin() as session:
        make_subscriber(session, "known@example.com", now=services.clock())
        make_subscriber(session, "named@example.com", now=services.clock(), first_name="Kim")
        erased = make_subscriber(session, "erased@example.com", now=services.clock())
        erasure.erase(session, erased.id, now=services.clock())
    plan = plan_for(
        app,
        "Email Address,First Name,Time Zone\n"
        "new@example.com,Ann,America/Vancouver\n"
        "known@example.com,Ken,\n"
        "named@example.com,Kimberly,\n"
        "not an address,Bo,\n"
        "\n"
        "NEW@example.com,Ann again,\n"
        "erased@example.com,,\n"
        "zone@example.com,,Mars/Olympus\n",
    )
    assert [(row.line, row.outcome.value) for row in plan.rows] == [
        (2, "new"),
        (3, "updated"),
        (4, "unchanged"),
        (5, "invalid"),
        (7, "duplicate"),
        (8, "skipped"),
        (9, "invalid"),
    ]
    issues = {row.line: row.reason for row in plan.issues}
    assert "@" in issues[5]
    assert issues[7] == "the same address as line 2"
    assert "erased" in issues[8]
    assert "Mars/Olympus" in issues[9]
    assert plan.rows[0].time_zone == "America/Vancouver"
    assert plan.columns == {
        "email": "Email Address",
        "first_name": "First Name",
        "time_zone": "Time Zone",
    }
    assert count(app, Subscriber) == 2  # the preview wrote nothing


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("email,name\nzoë@example.com,Zoë\n".encode("latin-1"), r"not UTF-8 text \(line 2"),
        (b"name,phone\nAnn,123\n", "No email column"),
        (b"", "empty"),
        (b'email\n"unterminated\n', None),  # csv reads it as one odd cell: an invalid row
    ],
)
def test_a_broken_file_gets_a_clear_message(app, data, message):
    if message is None:
        plan = plan_for(app, data)
        assert plan.count(importer.Outcome.INVALID) == 1
        return
    with pytest.raises(importer.ImportProblem, match=message):
        plan_for(app, data)


def test_a_file_over_the_limit_is_refused_before_reading(app, monkeypatch):
    monkeypatch.setattr(importer, "MAX_IMPORT_BYTES", 100)
    with pytest.raises(importer.ImportProblem, match="Split it"):
        plan_for(app, "email\n" + "a@example.com\n" * 20)


def test_importing_as_confirmed_records_the_consent_and_can_start_the_sequence(app):
    done = apply(
        app, "email,first_name\nann@example.com,Ann\nbo@example.com,\n", join_sequence=True
    )
    assert (done.created, done.enrolled, done.confirmations_queued) == (2, 2, 0)
    ann = get_subscriber(app, "ann@example.com")
    assert ann.status is SubscriberStatus.CONFIRMED and ann.source == "import"
    with services_of(app).database.read() as session:
        consent = session.scalar(
            sa.select(ConsentRecord).where(ConsentRecord.subscriber_id == ann.id)
        )
        assert (consent.action, consent.text) == ("import", CONSENT)
    assert count(app, Enrollment) == 2
    assert outbox(app) == []  # no welcome email: they did not ask for the guide


def test_importing_with_double_opt_in_sends_confirmations(app):
    done = apply(app, "email\nann@example.com\nbo@example.com\n", mode=importer.Mode.CONFIRM)
    assert done.confirmations_queued == 2
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.PENDING
    assert [row.kind for row in outbox(app)] == ["confirm", "confirm"]
    assert count(app, Enrollment) == 0  # they join when they confirm


def test_people_who_left_are_imported_as_such_and_never_mailed(app):
    apply(
        app,
        "email,status\ngone@example.com,unsubscribed\nbad@example.com,bounced\n",
        mode=importer.Mode.CONFIRM,
        join_sequence=True,
    )
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.UNSUBSCRIBED
    assert get_subscriber(app, "bad@example.com").status is SubscriberStatus.BOUNCED
    assert outbox(app) == [] and count(app, Enrollment) == 0


def test_a_failure_part_way_leaves_nothing_imported(app, monkeypatch):
    calls = []

    def enroll_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return True

    monkeypatch.setattr(sequences, "enroll", enroll_then_fail)
    with pytest.raises(RuntimeError):
        apply(app, "email\n" + "".join(f"r{n}@example.com\n" for n in range(5)), join_sequence=True)
    assert count(app, Subscriber) == 0 and count(app, ConsentRecord) == 0
    assert count(app, Event) == 0


def test_the_consent_statement_is_required(app):
    with pytest.raises(importer.ImportProblem, match="consent"):
        apply(app, "email\nann@example.com\n", consent="   ")
    assert count(app, Subscriber) == 0


ROUND_TRIP_COLUMNS = export.EXPORT_COLUMNS[:8]  # what a subscriber is, not their history


def exported(app) -> list[dict[str, str]]:
    result = app.test_cli_runner().invoke(args=["subscribers", "export"])
    assert result.exit_code == 0, result.output
    return [
        {name: row[name] for name in ROUND_TRIP_COLUMNS}
        for row in csv.DictReader(io.StringIO(result.output))
    ]


def test_export_wipe_import_export_gives_the_same_rows(app, clock, tmp_path):
    services = services_of(app)
    with services.database.begin() as session:
        # Names the signup form accepts that a spreadsheet would run as formulas.
        for n, name in enumerate(["=1+1", "+1", "-2", "@SUM(A1)", "Zoë", None]):
            make_subscriber(
                session,
                f"=r{n}@example.com" if n == 0 else f"r{n}@example.com",
                now=clock.advance(hours=1),
                first_name=name,
                status=[SubscriberStatus.CONFIRMED, SubscriberStatus.UNSUBSCRIBED][n % 2],
                time_zone="Asia/Tokyo",
                source="blog",
                confirmed_at=clock(),
                unsubscribed_at=clock() if n % 2 else None,
            )
    before = exported(app)
    path = tmp_path / "export.csv"
    result = app.test_cli_runner().invoke(args=["subscribers", "export", "-o", str(path)])
    assert result.exit_code == 0
    with services.database.begin() as session:
        for model in (OutboxMessage, Event, ConsentRecord, Enrollment, Subscriber):
            session.execute(sa.delete(model))
    result = app.test_cli_runner().invoke(
        args=["subscribers", "import", str(path), "--consent", CONSENT, "--mode", "confirmed"]
    )
    assert result.exit_code == 0, result.output
    assert "imported 6 new" in result.output
    assert exported(app) == before
    assert len(before) == 6 and before[0]["email"] == "'=r0@example.com"


def test_the_cli_dry_run_writes_nothing(app, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("email\nann@example.com\nnope\n")
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(path), "--dry-run"])
    assert result.exit_code == 0
    assert "new 1" in result.output and "line 3: invalid: nope" in result.output
    assert count(app, Subscriber) == 0


@pytest.mark.slow
def test_the_owner_previews_and_imports_in_the_browser_flow(app, admin_client):  # noqa: F811
    data = b"email,first_name\nann@example.com,Ann\nbroken,\n"
    token = csrf_token(admin_client, "/admin/subscribers/import")
    preview = admin_client.post(
        "/admin/subscribers/import",
        data={"csrf_token": token, "file": (io.BytesIO(data), "list.csv")},
        content_type="multipart/form-data",
    )
    page = preview.get_data(as_text=True)
    assert preview.status_code == 200
    assert "<dt>New</dt><dd>1</dd>" in page.replace("\n", "")
    assert "<td>3</td><td>broken</td><td>invalid</td>" in page.replace("\n", "")
    assert count(app, Subscriber) == 0
    done = admin_client.post(
        "/admin/subscribers/import/apply",
        data={"csrf_token": token, "consent": CONSENT, "mode": "confirmed"},
    )
    assert done.status_code == 303
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.CONFIRMED
    again = admin_client.post(
        "/admin/subscribers/import/apply",
        data={"csrf_token": token, "consent": CONSENT, "mode": "confirmed"},
    )
    assert again.status_code == 303 and count(app, Subscriber) == 1  # the file is gone


@pytest.mark.slow
def test_an_upload_over_the_limit_gets_a_clear_page(app, admin_client, monkeypatch):  # noqa: F811
    monkeypatch.setattr(importer, "MAX_IMPORT_BYTES", 1000)
    token = csrf_token(admin_client, "/admin/subscribers/import")
    response = admin_client.post(
        "/admin/subscribers/import",
        data={"csrf_token": token, "file": (io.BytesIO(b"email\n" + b"x" * 200_000), "big.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert "Split it" in response.get_data(as_text=True)
