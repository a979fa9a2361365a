"""Email content: the Jinja environment over templates/emails, and rendering one email.

Each email is a pair `NAME.txt` / `NAME.html` extending the shared layouts. The subject is
the `subject` block of the text template. HTML is autoescaped; undefined variables fail.
The owner's own templates (CONTENT_DIR/emails) win over the shipped ones, name by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .config import PROJECT_ROOT

SHIPPED_EMAILS = PROJECT_ROOT / "templates" / "emails"
MAX_SUBJECT_LENGTH = 200


class TemplateProblem(ValueError):
    """An email template is missing or renders something unusable."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def make_environment(directories: Sequence[Path]) -> jinja2.Environment:
    """A Jinja environment for email templates: HTML escaped, text not, strict variables."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in directories]),
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


def email_directories(content_dir: str) -> list[Path]:
    """Where email templates are looked up, the owner's own folder first."""
    directories = [SHIPPED_EMAILS]
    if content_dir:
        directories.insert(0, Path(content_dir) / "emails")
    return directories
