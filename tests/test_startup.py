"""What a start loads: every `flask --app wsgi ...` command builds the whole app first, so
a library only some pages or commands use is loaded where it is used, not at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET

# Each costs 10 to 100 ms (and some MB) to import; none is needed to build the app.
LOADED_WHEN_USED = (
    "alembic",  # `db upgrade`, `db current`
    "cryptography",  # DKIM keys
    "dkim",  # signing, with DKIM configured
    "email_validator",  # an address coming in
    "fpdf",  # `guide build`
    "imaplib",  # `bounces poll`
    "inscriptis",  # a newsletter's plain text
    "lxml",  # (inscriptis's parser)
)


@pytest.mark.slow
def test_building_the_app_loads_no_library_it_does_not_need_yet(tmp_path):
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        "APP_ENV": "testing",
        "SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.db'}",
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "MAIL_URL": "console:",
        "LOG_LEVEL": "WARNING",
    }
    check = (
        "import json, sys, wsgi; "
        f"print(json.dumps([m for m in {LOADED_WHEN_USED!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
