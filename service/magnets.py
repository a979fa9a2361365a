"""Lead magnets: the free resource a reader signs up for, and what confirming starts.

A LeadMagnet says what the download link serves (a file, or a page to send the reader
to), the name the browser saves it as, the email that delivers it (its incentive
template) and the drip sequence confirming starts. The service keeps them in a mapping by
id; today the content gives one, the glute guide, built from content/guide unless
GUIDE_PATH names the owner's own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .guide import GUIDE_TITLE

DEFAULT_MAGNET = "glute-guide"


@dataclass(frozen=True)
class LeadMagnet:
    id: str
    title: str
    # What the download link serves: a file, or (url) a page it sends the reader to.
    resource: Path | None
    url: str | None
    download_name: str
    incentive_template: str  # the email that delivers it once the reader confirms
    sequence: str | None  # the drip sequence confirming starts, if any
    # Built from Markdown by service.guide (and rebuilt when missing), not the owner's file.
    built: bool = False


def from_settings(settings: Settings, *, sequence: str) -> dict[str, LeadMagnet]:
    """The lead magnets the content and settings describe, by id."""
    guide = LeadMagnet(
        id=DEFAULT_MAGNET,
        title=GUIDE_TITLE,
        resource=settings.guide_path,
        url=None,
        download_name=settings.GUIDE_DOWNLOAD_NAME,
        incentive_template="welcome",
        sequence=sequence,
        built=settings.uses_shipped_guide,
    )
    return {guide.id: guide}
