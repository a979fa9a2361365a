"""The flask commands an operator runs."""

from __future__ import annotations

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
