"""Email content: the Jinja environment over templates/emails, and rendering one email.

Each email is a pair `NAME.txt` / `NAME.html` extending the shared layouts. The subject is
the `subject` block of the text template. HTML is autoescaped; undefined variables fail.
The owner's own templates (CONTENT_DIR/emails) win over the shipped ones, name by name.

Sending thousands of copies of one email, the service renders it once (a Skeleton, with
markers where the personal fields go) and fills in each reader's name and links. Filling
escapes for HTML exactly as Jinja would, so the result is the same as a full render.
Templates may print the personal fields and test whether first_name is set (both ways are
rendered); a template that changes a field (its case, its length) is found out when the
skeleton is built and is then rendered in full for every reader. Comparing a field with a
fixed value (`first_name == "Ann"`) is not found out: don't. Skeletons are kept until the
process restarts, so restart the scheduler after editing an email.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache
from markupsafe import escape

from .config import PROJECT_ROOT

SHIPPED_EMAILS = PROJECT_ROOT / "templates" / "emails"
MAX_SUBJECT_LENGTH = 200
# What differs from one reader to the next; everything else is the same for all copies.
PERSONAL_FIELDS = (
    "first_name",
    "confirm_url",
    "download_url",
    "unsubscribe_url",
    "preferences_url",
)
SKELETON_CACHE_SIZE = 256


class TemplateProblem(ValueError):
    """An email template is missing or renders something unusable."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def _marker(field: str) -> str:
    return f"\x1b{field}\x1b"


def _other_marker(field: str) -> str:
    # Another length and case: a template that measures or changes the value shows up.
    return f"\x1b{field.upper()}-{'x' * 37}\x1b"


@dataclass(frozen=True)
class Skeleton:
    """An email rendered once, with markers where each reader's own values go."""

    subject: str
    text: str
    html: str
    fields: frozenset[str]  # the personal fields it shows

    def fill(self, values: Mapping[str, str]) -> RenderedEmail:
        subject, text, html = self.subject, self.text, self.html
        for field in self.fields:
            marker, value = _marker(field), values[field]
            subject = subject.replace(marker, value)
            text = text.replace(marker, value)
            html = html.replace(marker, str(escape(value)))
        return RenderedEmail(subject=subject, text=text, html=html)


class _CompiledTemplates(jinja2.BytecodeCache):
    """Templates compiled once per process, for every environment made in it (the web app,
    the CLI and each test app make their own). Jinja keys each by its name and checks the
    source's checksum, so an edited template is compiled afresh."""

    def __init__(self) -> None:
        self._compiled: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with self._lock:
            code = self._compiled.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = bucket.bytecode_to_string()
        with self._lock:
            self._compiled[bucket.key] = code


# Shared by every environment of one kind (all email environments alike, all page
# environments alike): Jinja's key is the template's file, so the kinds never meet.
COMPILED_TEMPLATES = _CompiledTemplates()


def make_environment(directories: Sequence[Path]) -> jinja2.Environment:
    """A Jinja environment for email templates: HTML escaped, text not, strict variables."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in directories]),
        bytecode_cache=COMPILED_TEMPLATES,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


class EmailRenderer:
    """Renders emails by name with the site-wide values every email needs."""

    def __init__(self, directories: Sequence[Path], site: Mapping[str, Any]) -> None:
        self.environment = make_environment(directories)
        self.environment.globals["site"] = dict(site)
        self._skeletons: OrderedDict[tuple[str, str, bool], Skeleton | None] = OrderedDict()

    def skeleton(
        self, name: str, context: Mapping[str, Any], *, has_first_name: bool
    ) -> Skeleton | None:
        """The email rendered once for everyone (None: it must be rendered per reader)."""
        key = (name, json.dumps(context, sort_keys=True, default=str), has_first_name)
        if key in self._skeletons:
            self._skeletons.move_to_end(key)
            return self._skeletons[key]
        renders = []
        for marker in (_marker, _other_marker):
            markers = {field: marker(field) for field in PERSONAL_FIELDS}
            values: dict[str, Any] = dict(markers)
            if not has_first_name:
                values["first_name"] = None
                del markers["first_name"]
            renders.append(_shared(self.render(name, {**context, **values}), markers))
        first, second = renders
        fields = frozenset(f for f in PERSONAL_FIELDS if _marker(f) in first)
        leftover = first
        for field in fields:
            leftover = leftover.replace(_marker(field), "")
        skeleton = None
        if first == second and "\x1b" not in leftover:
            subject, text, html = first.split("\x00")
            skeleton = Skeleton(subject, text, html, fields)
        self._skeletons[key] = skeleton
        if len(self._skeletons) > SKELETON_CACHE_SIZE:
            self._skeletons.popitem(last=False)
        return skeleton

    def has_template(self, name: str) -> bool:
        """Whether NAME.txt and NAME.html both exist."""
        names = set(self.environment.list_templates(extensions=["txt", "html"]))
        return f"{name}.txt" in names and f"{name}.html" in names

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedEmail:
        """Render NAME.txt and NAME.html with `context`."""
        try:
            text_template = self.environment.get_template(f"{name}.txt")
            html_template = self.environment.get_template(f"{name}.html")
        except jinja2.TemplateNotFound as exc:
            raise TemplateProblem(f"email template {exc.name} not found") from exc
        if "subject" not in text_template.blocks:
            raise TemplateProblem(f"{name}.txt has no subject block")
        subject_context = text_template.new_context(dict(context))
        subject = " ".join("".join(text_template.blocks["subject"](subject_context)).split())
        if not subject or len(subject) > MAX_SUBJECT_LENGTH:
            raise TemplateProblem(f"{name}.txt renders an empty or overlong subject")
        text = text_template.render(context).strip() + "\n"
        html = html_template.render(context, subject=subject)
        return RenderedEmail(subject=subject, text=text, html=html)


def _shared(rendered: RenderedEmail, markers: Mapping[str, str]) -> str:
    combined = "\x00".join((rendered.subject, rendered.text, rendered.html))
    for field, marker in markers.items():
        combined = combined.replace(marker, _marker(field))
    return combined


def sequence_file(content_dir: str) -> Path:
    """The sequence definition: the owner's own, if CONTENT_DIR has one, else the shipped."""
    if content_dir:
        own = Path(content_dir) / "emails" / "sequence.toml"
        if own.is_file():
            return own
    return SHIPPED_EMAILS / "sequence.toml"


def sequence_files(content_dir: str) -> list[Path]:
    """Every sequence definition: the default (`sequence.toml`), then each file in
    `sequences/`, the shipped ones before the owner's (a later one of the same name wins)."""
    files = [sequence_file(content_dir), *sorted((SHIPPED_EMAILS / "sequences").glob("*.toml"))]
    if content_dir:
        files.extend(sorted((Path(content_dir) / "emails" / "sequences").glob("*.toml")))
    return files


def email_directories(content_dir: str) -> list[Path]:
    """Where email templates are looked up, the owner's own folder first."""
    directories = [SHIPPED_EMAILS]
    if content_dir:
        directories.insert(0, Path(content_dir) / "emails")
    return directories
