"""The Makefile as a user meets it: what `make ui` binds."""

from __future__ import annotations

import re
import subprocess

from support import REPO


def test_the_mlflow_ui_listens_on_localhost_unless_the_user_asks_otherwise():
    """`make ui` (the only server gdpipe starts) binds 127.0.0.1; UI_HOST=0.0.0.0 is the user's explicit choice."""
    def ui_command(*overrides: str) -> str:
        done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "ui", *overrides], cwd=REPO, capture_output=True, text=True, check=True)
        return done.stdout

    assert " --host 127.0.0.1 " in ui_command()
    assert " --host 0.0.0.0 " in ui_command("UI_HOST=0.0.0.0")
    sources = [REPO / "Makefile", *(REPO / "src" / "gdpipe").rglob("*.py"), *(REPO / "stages").glob("*.py")]
    starters = [path.name for path in sources if re.search(r"mlflow\W+(ui|server)\b|0\.0\.0\.0|host=", path.read_text())]
    assert starters == ["Makefile"], starters  # no other place starts a server or binds every interface



