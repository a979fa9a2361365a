"""A newsletter's Markdown as the three things that show it: HTML for the archive, HTML for
the email (links in the house colour, inline, as email styles must be) and plain text.

Raw HTML in the Markdown is shown as the text it is, never run; link and image targets
outside a few schemes are dropped. The plain text is made from the same HTML by inscriptis
(a maintained HTML-to-text converter), so no Markdown mark (`**`, `##`, `](`) reaches a
reader: links read "text (url)", images "alt (url)".
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as etree
from urllib.parse import urlsplit

import markdown
import markdown.util
from markdown.treeprocessors import Treeprocessor

# Where a newsletter's links and images may point: javascript:, data:, vbscript:, relative
# and scheme-relative targets are dropped (the text stays, unlinked).
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
IMAGE_SCHEMES = frozenset({"http", "https"})
# The site's --accent (static/site.css): a newsletter's links look like the site's.
LINK_COLOUR = "#2f6f5e"
# Everything below a space but tab and newline: nothing an owner types, and Markdown marks
# its own placeholders with \x02 and \x03.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")


def _readable(url: str) -> str:
    """A target as a browser reads it: entities decoded (Markdown writes an autolinked
    address as &#109;&#97;..., with its own stand-in for "&")."""
    return html.unescape(url.replace(markdown.util.AMP_SUBSTITUTE, "&"))


def _allowed(url: str, schemes: frozenset[str]) -> bool:
    # Tabs, newlines and controls are ignored too ("java\tscript:").
    url = re.sub(r"[\x00-\x20\x7f]", "", _readable(url))
    try:
        return urlsplit(url).scheme.lower() in schemes
    except ValueError:
        return False


class _SafeTargets(Treeprocessor):
    """Drops link and image targets outside LINK_SCHEMES / IMAGE_SCHEMES."""

    def run(self, root: etree.Element) -> None:
        for element in root.iter():
            if element.tag == "a" and not _allowed(element.get("href", ""), LINK_SCHEMES):
                element.attrib.pop("href", None)
            elif element.tag == "img" and not _allowed(element.get("src", ""), IMAGE_SCHEMES):
                element.attrib.pop("src", None)


class _TargetsAsText(Treeprocessor):
    """For the plain text: a link's target written after its text, an image as its alt
    text and address (a text reader sees no href and no picture)."""

    def run(self, root: etree.Element) -> None:
        for element in root.iter():
            if element.tag == "a" and element.get("href"):
                target = _readable(element.attrib.pop("href"))
                shown = _readable("".join(element.itertext()))
                if shown not in (target, target.removeprefix("mailto:")):  # not an autolink
                    element.tail = f" ({target})" + (element.tail or "")
            elif element.tag == "img":
                alt, src = element.get("alt", ""), element.get("src", "")
                element.tag, element.text = (
                    "span",
                    " ".join(filter(None, (alt, src and f"({src})"))),
                )
                element.attrib.clear()


def _markdown(*, as_text: bool = False) -> markdown.Markdown:
    """Markdown without raw HTML (typed HTML comes out as the text it is) and with only
    safe link targets."""
    md = markdown.Markdown(extensions=["sane_lists"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    # After "inline" (which makes the links), before "prettify".
    md.treeprocessors.register(_SafeTargets(md), "safe_targets", 15)
    if as_text:
        md.treeprocessors.register(_TargetsAsText(md), "targets_as_text", 14)
    return md


def _converted(body: str, *, as_text: bool = False) -> str:
    rendered = _markdown(as_text=as_text).convert(body)
    if "\x02" in rendered or "\x03" in rendered:
        # Markdown loses track of a placeholder in some broken emphasis (`*[**[*&amp;`):
        # the stashed piece is dropped rather than shown as "klzzwxh:0000".
        rendered = re.sub(r"\x02?klzzwxh:\d+\x03?|[\x02\x03]", "", rendered)
    return rendered


def to_html(body: str) -> str:
    """The Markdown body as HTML."""
    return _converted(CONTROL.sub("", body))


def for_email(body_html: str) -> str:
    """`to_html`'s HTML with each link in the house colour. Every "<a " in it is a tag:
    the owner's own "<a " comes out of Markdown as "&lt;a "."""
    return body_html.replace("<a ", f'<a style="color:{LINK_COLOUR};" ')


def to_text(body: str) -> str:
    """The Markdown body as plain text: no Markdown marks, targets written out."""
    # Loaded when a newsletter is written, not at every start (inscriptis and lxml: 13 ms).
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    return get_text(_converted(CONTROL.sub("", body), as_text=True), ParserConfig()).strip()
