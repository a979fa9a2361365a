"""The lead magnet: a real PDF built from the editable source in the repository."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from service import guide


@pytest.fixture(scope="module")
def guide_text(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("guide") / "guide.pdf"
    guide.build_pdf(path, site_name="Low Back Relief")
    reader = PdfReader(io.BytesIO(path.read_bytes()))
    assert reader.metadata.title == guide.GUIDE_TITLE
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_the_guide_has_six_exercises_with_what_matters(guide_text):
    for exercise in [
        "Glute bridge",
        "Clamshell",
        "Bird dog",
        "Side-lying leg raise",
        "Sit to stand",
        "Side steps with a band",
    ]:
        assert exercise in guide_text
    for label in ["Sets and reps:", "What to feel:", "What to avoid:"]:
        assert guide_text.count(label) == 6


def test_the_guide_carries_the_medical_disclaimer(guide_text):
    assert "Consult your physician before beginning any exercise program" in guide_text
    assert "Stop any exercise that hurts" in guide_text


def test_typographic_punctuation_is_accepted():
    pdf = guide.render_pdf("# Title\n\n\u201cQuoted\u201d \u2014 fine\u2026", site_name="x")
    assert pdf.startswith(b"%PDF-")


def test_a_character_the_font_lacks_is_reported_with_its_line():
    with pytest.raises(guide.GuideSourceError, match="line 3"):
        guide.render_pdf("# Title\n\n\u6f22\u5b57", site_name="x")


def test_ensure_built_builds_once_and_rebuilds_when_the_source_is_newer(tmp_path):
    path = tmp_path / "guide.pdf"
    guide.ensure_built(path, site_name="x")
    first = path.stat().st_mtime_ns
    guide.ensure_built(path, site_name="x")
    assert path.stat().st_mtime_ns == first
    import os

    os.utime(path, ns=(0, 0))  # older than the source: rebuilt
    guide.ensure_built(path, site_name="x")
    assert path.stat().st_mtime_ns > 0
