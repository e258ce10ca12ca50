"""The package as a whole: its root runs no code, nothing it starts phones home, and docs/layout.md names every
module."""

from __future__ import annotations

import ast
import re

from support import REPO


def test_the_package_root_runs_no_code():
    """Every stage imports src/gdpipe/__init__.py, which no dep lists: it must stay a docstring, so no change to it can
    change a result.
    """
    tree = ast.parse((REPO / "src" / "gdpipe" / "__init__.py").read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)


def test_nothing_phones_home():
    dvc_config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in dvc_config and "check_update = false" in dvc_config
    assert "export MLFLOW_DISABLE_TELEMETRY := true" in (REPO / "Makefile").read_text()
    assert '"MLFLOW_DISABLE_TELEMETRY": "true"' in (REPO / "src" / "gdpipe" / "track" / "settings.py").read_text()


def test_the_layout_page_names_every_module_and_stage():
    """docs/layout.md gives each file of src/gdpipe and stages/ its line; a new module without one fails here."""
    layout = (REPO / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"\b\w+\.py\b", layout)) | {"python"}
    files = [*(REPO / "src" / "gdpipe").rglob("*.py"), *(REPO / "stages").glob("*.py")]
    missing = sorted(
        str(path.relative_to(REPO)) for path in files if path.name != "__init__.py" and path.name not in listed
    )
    assert missing == [], f"not in docs/layout.md: {missing}"
