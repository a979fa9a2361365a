"""The flask commands an operator runs."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service import create_app, migrate
from tests.conftest import settings_for


def test_db_upgrade_creates_the_schema_from_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    app = create_app(settings_for(url, tmp_path))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"revision {migrate.head_revision()}" in result.output
    engine = sa.create_engine(url)
    assert {"subscribers", "outbox", "consents"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.slow
def test_guide_build_writes_the_pdf(app, tmp_path):
    target = tmp_path / "out" / "guide.pdf"
    result = app.test_cli_runner().invoke(args=["guide", "build", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"%PDF-")


def test_guide_build_reports_a_bad_source(app, tmp_path):
    source = tmp_path / "guide.md"
    source.write_text("# Title\n\n\u6f22\n")
    result = app.test_cli_runner().invoke(
        args=["guide", "build", "--source", str(source), "--output", str(tmp_path / "g.pdf")]
    )
    assert result.exit_code != 0
    assert "line 3" in result.output


def test_embed_snippet_posts_to_the_public_address(app):
    result = app.test_cli_runner().invoke(args=["embed-snippet"])
    assert result.exit_code == 0
    snippet = result.output
    assert 'action="http://newsletter.test/subscribe"' in snippet
    assert 'name="website"' in snippet and 'name="time_zone"' in snippet
    assert 'src="http://newsletter.test/static/signup.js"' in snippet


def test_emails_preview_writes_what_a_reader_gets(app, tmp_path):
    result = app.test_cli_runner().invoke(
        args=["emails", "preview", "foam-rolling", "--first-name", "Sam", "--output", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "Subject: How to foam roll your glutes" in result.output
    html = (tmp_path / "foam-rolling.html").read_text()
    text = (tmp_path / "foam-rolling.txt").read_text()
    assert "Hi Sam," in html and "Hi Sam," in text
    assert "Consult your physician" in text and "/unsubscribe/" in html


def test_emails_preview_knows_the_other_emails_too(app, tmp_path):
    result = app.test_cli_runner().invoke(
        args=["emails", "preview", "welcome", "--output", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "Your Glute-Strengthening Guide is here" in result.output


def test_emails_preview_of_an_unknown_email_lists_what_there_is(app):
    result = app.test_cli_runner().invoke(args=["emails", "preview", "nope"])
    assert result.exit_code != 0
    assert "why-glutes" in result.output and "welcome" in result.output


def test_emails_preview_refuses_an_email_that_needs_more_than_a_reader(app):
    """The newsletter's template needs a newsletter: the newsletter page previews it."""
    result = app.test_cli_runner().invoke(args=["emails", "preview", "broadcast"])
    assert result.exit_code != 0
    assert "no sequence step or email called 'broadcast'" in result.output
    assert "emails: confirm, guide_again, incentives/foam-rolling-planner, welcome" in result.output


def test_emails_send_test_sends_one_now(smtp_app, smtp):
    result = smtp_app.test_cli_runner().invoke(
        args=["emails", "send-test", "piriformis-stretch", "owner@example.com"]
    )
    assert result.exit_code == 0, result.output
    [received] = smtp.handler.wait_for(1)
    assert received.rcpt_tos == ["owner@example.com"]
    assert received.message["Subject"] == "A one-minute stretch you can do every day, in your chair"
    assert received.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_emails_send_test_reports_a_refused_address(smtp_app, smtp):
    smtp.faults.rcpt["owner@example.com"] = "550 5.1.1 No such user"
    result = smtp_app.test_cli_runner().invoke(
        args=["emails", "send-test", "why-glutes", "owner@example.com"]
    )
    assert result.exit_code != 0
    assert "No such user" in result.output
    bad = smtp_app.test_cli_runner().invoke(args=["emails", "send-test", "why-glutes", "nope"])
    assert bad.exit_code != 0 and "ADDRESS" in bad.output


def test_sequence_status_counts_readers_per_step(app, clock):
    from tests.test_sequences import confirm_reader, run_tick

    for n in range(3):
        confirm_reader(app, f"r{n}@example.com")
    run_tick(app)  # plans each reader's first step, two days out
    runner = app.test_cli_runner()
    output = runner.invoke(args=["sequence", "status"]).output
    lines = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.split()}
    assert lines["why-glutes"][-3:] == ["3", "0", "0"]  # waiting, due in 24 h, sent
    assert "(skipped: no course_url)" in output
    assert "active 3" in output
    clock.advance(days=1, hours=12)
    output = runner.invoke(args=["sequence", "status"]).output
    assert "due in the next 24 hours: 3" in output


@pytest.mark.slow
def test_sequence_pause_and_resume_by_address(app, clock):
    from tests.test_sequences import confirm_reader, enrollment, run_tick

    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)
    runner = app.test_cli_runner()
    assert (
        runner.invoke(args=["sequence", "pause", "Reader@Example.com"]).output.strip() == "paused"
    )
    assert enrollment(app, reader).status.value == "paused"
    assert "not paused" in runner.invoke(args=["sequence", "pause", "reader@example.com"]).output
    assert (
        runner.invoke(args=["sequence", "resume", "reader@example.com"]).output.strip() == "resumed"
    )
    assert enrollment(app, reader).status.value == "active"
    missing = runner.invoke(args=["sequence", "pause", "nobody@example.com"])
    assert missing.exit_code != 0 and "no subscriber" in missing.output
