"""Every kind of email the service sends, and the rules each kind keeps.

An outbox row's `kind` is one of the names below, stored as it is spelled here. What a
kind may do lives in RULES, in one place: who may receive it, whether its links go through
the click redirect, what its template is given beyond the row's own context, and what
holds it back. The outbox, the composer and dispatch read these rules instead of keeping
lists of their own. Adding a kind is one name and one entry in RULES (and, where
its template is fixed, the template pair in templates/emails).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

CONFIRM = "confirm"  # the double opt-in link
WELCOME = "welcome"  # a lead magnet's incentive email, once per magnet per reader
GUIDE_AGAIN = "guide"  # a fresh download link for a confirmed reader
SEQUENCE_STEP = "sequence"  # one step of a drip sequence
NEWSLETTER = "broadcast"  # a one-off newsletter, one row per recipient
NEWSLETTER_TEST = "broadcast_test"  # a newsletter's test copy to the owner


class Receivers(enum.Enum):
    """Who may receive an email of a kind, judged again just before it goes."""

    NOT_CONFIRMED = "anyone who has not confirmed (yet, or again)"
    CONFIRMED = "confirmed readers"
    OWNER = "the owner, with no subscriber behind the address"


class ExtraData(enum.Enum):
    """What the composer adds to the template's context beyond the row's own."""

    NONE = "nothing"
    SEQUENCE = "the step's sequence (its links, its name)"
    NEWSLETTER = "the newsletter's subject and body"


@dataclass(frozen=True)
class Rules:
    receivers: Receivers
    # The template every email of the kind uses; None where each row names its own (a
    # step's, a newsletter's, a lead magnet's incentive).
    template: str | None = None
    # Its links go through our redirect and count clicks (service.tracking).
    tracked: bool = False
    data: ExtraData = ExtraData.NONE
    # False: rendered afresh for every copy; a draft's test copy may have changed since the
    # last one, so nothing rendered earlier may stand in for it.
    rendered_once: bool = True
    # A drip sequence's step: the row names its sequence and step. It is held until the
    # reader's sending hours begin (service.sequences.sending_window_opens) and dropped once
    # its step has left the sequence.
    sequence_step: bool = False
    # Mail sent to many readers at once rather than in answer to one reader's action: it
    # says so (Precedence: bulk, Auto-Submitted), so out-of-office replies stay away.
    bulk: bool = False


RULES: dict[str, Rules] = {
    CONFIRM: Rules(Receivers.NOT_CONFIRMED, template="confirm"),
    WELCOME: Rules(Receivers.CONFIRMED),
    GUIDE_AGAIN: Rules(Receivers.CONFIRMED, template="guide_again"),
    SEQUENCE_STEP: Rules(
        Receivers.CONFIRMED,
        tracked=True,
        data=ExtraData.SEQUENCE,
        sequence_step=True,
        bulk=True,
    ),
    NEWSLETTER: Rules(
        Receivers.CONFIRMED,
        template="broadcast",
        tracked=True,
        data=ExtraData.NEWSLETTER,
        bulk=True,
    ),
    # Its links are the newsletter's own: the owner's clicks are not readers' clicks.
    NEWSLETTER_TEST: Rules(
        Receivers.OWNER, template="broadcast", data=ExtraData.NEWSLETTER, rendered_once=False
    ),
}


def rules_of(kind: str) -> Rules:
    """The rules of `kind`; LookupError for a name that is not one of ours."""
    try:
        return RULES[kind]
    except KeyError:
        raise LookupError(f"{kind!r} is not a kind of email this service sends") from None


def with_template(template: str) -> str | None:
    """The kind that always uses `template` (for previews by template name), if one does."""
    found = [kind for kind, rules in RULES.items() if rules.template == template]
    return found[0] if found else None
