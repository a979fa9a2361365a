"""Reading a CSV upload as it streams in, for service.importer: bytes into lines (UTF-8,
a byte order mark dropped, no NUL, no endless line), lines into records, the header's
names into our fields, and cells as our own export wrote them."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from .export import FORMULA_STARTS


class ImportProblem(ValueError):
    """The file cannot be imported at all; the message says why, for the owner."""


# A CSV line longer than this is not a subscriber list (and would otherwise be held whole).
MAX_LINE_CHARACTERS = 1_000_000

# Header names we recognize for each field (compared lowercased, spaces and dashes as _).
COLUMNS = {
    "email": ("email", "email_address", "e_mail", "mail"),
    "first_name": ("first_name", "firstname", "name", "given_name"),
    "time_zone": ("time_zone", "timezone", "tz"),
    "source": ("source",),
    "status": ("status",),
    "signed_up": ("signed_up_utc", "signed_up", "created_at"),
    "confirmed": ("confirmed_utc", "confirmed_at"),
    "unsubscribed": ("unsubscribed_utc", "unsubscribed_at"),
    "tags": ("tags", "tag"),
}


def _not_utf8(line: int) -> ImportProblem:
    return ImportProblem(
        f"The file is not UTF-8 text (line {line} has a byte that is not). Save it "
        "from your spreadsheet as 'CSV UTF-8' and upload it again."
    )


def decoded_lines(pieces: Iterable[bytes]) -> Iterator[str]:
    """The text of a file arriving in pieces, as lines split the way the csv module wants
    them (newline=""): UTF-8, a byte order mark dropped. ImportProblem names the line of a
    byte that is not UTF-8, of a NUL (no database stores one), or of a line too long to be
    a row."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines_before = 0  # complete lines in the pieces decoded so far
    pending = ""
    for piece in pieces:
        try:
            text = decoder.decode(piece)
        except UnicodeDecodeError as exc:
            raise _not_utf8(lines_before + piece.count(b"\n", 0, exc.start) + 1) from None
        if "\x00" in text:
            line = lines_before + text.count("\n", 0, text.index("\x00")) + 1
            raise ImportProblem(
                f"Line {line} holds a NUL character: the file is not text. Save it from your "
                "spreadsheet as 'CSV UTF-8' and upload it again."
            )
        lines_before += piece.count(b"\n")
        lines = io.StringIO(pending + text, newline="").readlines()
        # The last line may go on in the next piece (even a lone "\r" may be half of "\r\n").
        pending = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        if len(pending) > MAX_LINE_CHARACTERS:
            raise ImportProblem(
                f"Line {lines_before + 1} is over {MAX_LINE_CHARACTERS:,} characters long: "
                "this does not look like a CSV file of subscribers."
            )
        yield from lines
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _not_utf8(lines_before + 1) from None
    if pending:
        yield pending


def header_map(header: list[str]) -> dict[str, int]:
    names = [h.strip().lstrip("\ufeff").lower().replace(" ", "_").replace("-", "_") for h in header]
    found = {}
    for name, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in names:
                found[name] = names.index(alias)
                break
    return found


def undefused(cell: str) -> str:
    """A cell as it was before an export put an apostrophe before a formula character."""
    cell = cell.strip()
    if cell.startswith("'") and cell[1:2] and cell[1:].startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def when(cell: str, column: str) -> datetime | None:
    if not cell:
        return None
    try:
        value = datetime.fromisoformat(cell)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise ValueError(
            f"{column} {cell[:40]!r} is not a date and time (YYYY-MM-DD HH:MM:SS)"
        ) from None
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the last instant UTC holds
        raise ValueError(f"{column} {cell[:40]!r} is not a date we can keep") from None


def records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(lines)
    try:
        for cells in reader:
            yield reader.line_num, cells
    except csv.Error as exc:
        raise ImportProblem(f"Line {reader.line_num}: the file is not valid CSV ({exc}).") from None
