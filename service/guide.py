"""Building a lead magnet's PDF from its Markdown source (the shipped guide's, and any
magnet whose magnet.toml names `markdown`).

The source (content/magnets/<id>/*.md) is the owner's to edit; `build_pdf` turns it into
the PDF the download link serves. The built file is not kept in git: `make run` builds it,
and the download view builds it on first use if it is missing or older than its source.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import markdown

from .config import PROJECT_ROOT

GUIDE_SOURCE = PROJECT_ROOT / "content" / "magnets" / "glute-guide" / "guide.md"
GUIDE_TITLE = "The Glute-Strengthening Guide"

ACCENT = (47, 111, 94)
MUTED = (111, 102, 93)
# The PDF core fonts cover Latin-1 only; typographic punctuation is mapped to its plain form.
PLAIN_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)

_build_lock = threading.Lock()


class GuideSourceError(ValueError):
    """The guide's source cannot be typeset (for example a character the font lacks)."""


def _guide_pdf(footer_text: str):
    # fpdf2 is imported here, not at the top: it costs ~30 MB, and only `guide build` and
    # the first download need it, not every web worker and command.
    from fpdf import FPDF

    class GuidePDF(FPDF):
        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("Helvetica", size=8)
            self.set_text_color(*MUTED)
            self.cell(0, 10, f"{footer_text}   |   page {self.page_no()}", align="C")

    return GuidePDF(format="A4")


def render_pdf(source: str, *, site_name: str, title: str = GUIDE_TITLE) -> bytes:
    """A magnet as PDF bytes, from its Markdown source."""
    text = source.translate(PLAIN_PUNCTUATION)
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        line = text.count("\n", 0, exc.start) + 1
        raise GuideSourceError(
            f"line {line}: the character {bad!r} cannot be typeset in the PDF's font"
        ) from exc
    html = markdown.markdown(text, extensions=["sane_lists"])
    from fpdf import FontFace

    pdf = _guide_pdf(f"{site_name}  -  general information, not medical advice")
    pdf.set_title(title)
    pdf.set_author(site_name)
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.write_html(
        html,
        tag_styles={
            "h1": FontFace(color=ACCENT, size_pt=24, emphasis="BOLD"),
            "h2": FontFace(color=ACCENT, size_pt=15, emphasis="BOLD"),
            "blockquote": FontFace(color=MUTED),
        },
    )
    return bytes(pdf.output())


def build_pdf(
    destination: Path, *, site_name: str, source: Path = GUIDE_SOURCE, title: str = GUIDE_TITLE
) -> Path:
    """Write the PDF to `destination` atomically (readers never see half a file)."""
    data = render_pdf(source.read_text(encoding="utf-8"), site_name=site_name, title=title)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=destination.parent, prefix=".guide-", suffix=".pdf")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, destination)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return destination


def ensure_built(
    destination: Path, *, site_name: str, source: Path = GUIDE_SOURCE, title: str = GUIDE_TITLE
) -> Path:
    """Build the PDF if it is missing (or older than its source)."""
    with _build_lock:
        if not destination.exists() or destination.stat().st_mtime < source.stat().st_mtime:
            build_pdf(destination, site_name=site_name, source=source, title=title)
    return destination
