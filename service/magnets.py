"""Lead magnets: the free resources readers sign up for, each a folder of content.

A magnet is `content/magnets/<id>/magnet.toml` and its files (and the same under
CONTENT_DIR for the owner's own, which win id by id). The file says what the download link
serves (a PDF built from Markdown, a file as it is, or a page the link sends the reader
to), the email that delivers it, the drip sequence it starts, the tags it gives, the
landing page's copy (`landing.md` beside it for the longer part) and the consent wording.
`load_all` reads and checks every magnet; MagnetError names the magnet and the problem, and
stops the service at startup, as a broken sequence does.

The glute guide (`glute-guide`) is the default: the landing page at `/`, and signups that
name no magnet. GUIDE_PATH and GUIDE_DOWNLOAD_NAME still replace its resource.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import markdown
from markupsafe import Markup

from .config import PROJECT_ROOT, Settings
from .tags import InvalidTag, clean_all, magnet_tag

DEFAULT_MAGNET = "glute-guide"
SHIPPED_MAGNETS = PROJECT_ROOT / "content" / "magnets"
# A magnet's id is in links and tokens: never all digits (service.tokens.SCOPE).
MAGNET_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}")
LANDING_FIELDS = ("page_title", "heading", "lede", "form_heading", "button")


class MagnetError(ValueError):
    """A magnet's folder cannot be used; the message names the magnet and the problem."""


@dataclass(frozen=True)
class Landing:
    """The copy of a magnet's landing page and form."""

    page_title: str
    heading: str
    lede: str
    form_heading: str
    button: str
    body_html: Markup  # landing.md, rendered ("" without one)


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
    source: Path | None = None  # the Markdown it is built from
    tags: tuple[str, ...] = ()  # besides magnet:<id>
    order: int = 100
    consent: str = ""  # "" for the shipped wording (templates/pages/consent.txt)
    short_name: str = ""  # in a subject line: "the glute guide"
    landing: Landing | None = None

    @property
    def all_tags(self) -> tuple[str, ...]:
        """Every tag a reader who asks for it gets."""
        return (magnet_tag(self.id), *self.tags)


def magnet_folders(content_dir: str) -> dict[str, Path]:
    """Each magnet's folder by id: the shipped ones, then the owner's, which win."""
    roots = [SHIPPED_MAGNETS]
    if content_dir:
        roots.append(Path(content_dir) / "magnets")
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if (folder / "magnet.toml").is_file():
                    found[folder.name] = folder
    return found


def load(
    folder: Path,
    *,
    built_into: Path,
    template_exists: Callable[[str], bool] | None = None,
    sequence_exists: Callable[[str], bool] | None = None,
) -> LeadMagnet:
    """Read and check one magnet's folder; MagnetError says what is wrong."""
    magnet_id = folder.name

    def fail(message: str) -> MagnetError:
        return MagnetError(f"magnet {magnet_id} ({folder / 'magnet.toml'}): {message}")

    if not MAGNET_ID.fullmatch(magnet_id):
        raise fail("the folder's name is its id: lower-case letters, digits, '-' or '_'")
    try:
        data = tomllib.loads((folder / "magnet.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(str(exc)) from exc

    def text(key: str, *, required: bool = True, table: Mapping[str, object] = data) -> str:
        value = table.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise fail(f"'{key}' must be {'non-empty ' if required else ''}text")
        return value.strip()

    title = text("title")
    kinds = [key for key in ("markdown", "file", "url") if key in data]
    if len(kinds) != 1:
        raise fail("give exactly one resource: 'markdown', 'file' or 'url'")
    resource = url = source = None
    built = False
    if kinds == ["url"]:
        url = text("url")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise fail("'url' must be an http(s) address")
    else:
        path = folder / text(kinds[0])
        if not path.is_file():
            raise fail(f"'{kinds[0]}' names {path}, which is not a file")
        if kinds == ["markdown"]:
            source, resource, built = path, built_into / f"{magnet_id}.pdf", True
        else:
            resource = path
    download_name = text("download_name", required=url is None) or f"{magnet_id}.pdf"
    incentive = text("incentive_template")
    if template_exists is not None and not template_exists(incentive):
        raise fail(f"no email template {incentive}.txt / {incentive}.html")
    sequence = text("sequence", required=False) or None
    if sequence is not None and sequence_exists is not None and not sequence_exists(sequence):
        raise fail(f"no sequence called {sequence!r} (templates/emails/sequences/)")
    raw_tags = data.get("tags", [])
    if not isinstance(raw_tags, list) or not all(isinstance(t, str) for t in raw_tags):
        raise fail("'tags' must be a list of text")
    try:
        tags = tuple(clean_all(raw_tags))
    except InvalidTag as exc:
        raise fail(str(exc)) from exc
    order = data.get("order", 100)
    if not isinstance(order, int):
        raise fail("'order' must be a whole number")
    table = data.get("landing", {})
    if not isinstance(table, dict):
        raise fail("[landing] must be a table")
    body = folder / "landing.md"
    landing = Landing(
        *(text(key, table=table) for key in LANDING_FIELDS),
        body_html=(
            Markup(markdown.markdown(body.read_text(encoding="utf-8"), extensions=["sane_lists"]))
            if body.is_file()
            else Markup("")
        ),
    )
    return LeadMagnet(
        id=magnet_id,
        title=title,
        resource=resource,
        url=url,
        download_name=download_name,
        incentive_template=incentive,
        sequence=sequence,
        built=built,
        source=source,
        tags=tags,
        order=order,
        consent=text("consent", required=False),
        short_name=text("short_name", required=False) or title.removeprefix("The ").lower(),
        landing=landing,
    )


def load_all(
    settings: Settings,
    *,
    default_sequence: str,
    template_exists: Callable[[str], bool] | None = None,
    sequence_exists: Callable[[str], bool] | None = None,
) -> dict[str, LeadMagnet]:
    """Every magnet, by id, in listing order; the default magnet must be among them.

    The shipped default magnet starts the default sequence (`sequence.toml`, which an
    owner's own file of that name replaces, whatever it calls itself)."""
    built_into = Path(settings.INSTANCE_DIR) / "magnets"
    magnets = []
    for folder in magnet_folders(settings.CONTENT_DIR).values():
        shipped_default = folder == SHIPPED_MAGNETS / DEFAULT_MAGNET

        def exists(name: str, shipped_default: bool = shipped_default) -> bool:
            return shipped_default or sequence_exists is None or sequence_exists(name)

        magnet = load(
            folder,
            built_into=built_into,
            template_exists=template_exists,
            sequence_exists=exists,
        )
        if shipped_default:
            magnet = replace(magnet, sequence=default_sequence)
        magnets.append(magnet)
    found = {m.id: m for m in sorted(magnets, key=lambda m: (m.order, m.id))}
    if DEFAULT_MAGNET not in found:
        raise MagnetError(f"the default magnet {DEFAULT_MAGNET!r} is missing (content/magnets/)")
    guide = found[DEFAULT_MAGNET]
    if settings.GUIDE_PATH:
        # The owner's own file in place of the shipped guide, as before magnets were folders.
        guide = replace(guide, resource=Path(settings.GUIDE_PATH), built=False, source=None)
    else:
        guide = replace(guide, resource=settings.guide_path)
    found[DEFAULT_MAGNET] = replace(guide, download_name=settings.GUIDE_DOWNLOAD_NAME)
    return found
