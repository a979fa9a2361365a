"""The key that signs sessions and link tokens when SECRET_KEY is not set.

No key is built into the code: a key anyone can read in the source would let anyone sign
an admin session or an unsubscribe link. Outside production, the first process to start
makes a random key and keeps it in the instance folder (`INSTANCE_DIR/secret_key`, mode
0600); every later start, and every other process sharing the folder (the web workers,
the scheduler, the CLI), reads the same key. Production takes SECRET_KEY from its
configuration and never writes one.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from .config import ConfigError
from .config_checks import key_problem

logger = logging.getLogger(__name__)

KEY_FILE = "secret_key"


def instance_secret_key(instance_dir: Path) -> str:
    """The key kept in `instance_dir`, made there first if there is none yet."""
    path = instance_dir / KEY_FILE
    if not path.exists():
        _create(path)
    return _read(path)


def _create(path: Path) -> None:
    """Write a new key under a temporary name, then link it into place: of several
    processes starting at once, exactly one key wins and none reads a half-written file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return  # another process made it first; theirs is the key
    finally:
        draft.unlink(missing_ok=True)
    logger.warning(
        "made a new secret key in %s: keep that file with the database (links in emails "
        "already sent need it), or set SECRET_KEY",
        path,
    )


def _read(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"SECRET_KEY is not set and {path} cannot be read: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(0o600)
        logger.warning("%s was readable by other users; it is now mode 0600", path)
    problem = key_problem(key)
    if problem:
        raise ConfigError(
            f"{path} does not hold a usable key ({problem}): set SECRET_KEY, or delete the "
            "file to make a new one (links in emails already sent then stop working)"
        )
    return key
