"""A store's URI without its secrets: redaction keeps the host and drops the credentials, for any text
(hypothesis); the config check's line for a URI it cannot parse never holds the password. What the stages
print with such a URI: tests/integration/test_secrets.py."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gdpipe.core import store_uri
from gdpipe.core.store_uri import redact


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("http://alice:s3cret@127.0.0.1:50x2", "http://127.0.0.1:50x2"),
        ("http://alice:s3cret@[::1:5002", "http://[::1:5002"),
        ("http://alice:s3/cr#et@host:5002/path", "http://host:5002/path"),  # '/' and '#' not percent-encoded
        ("postgresql://alice:p@ss@db.example.org/mlflow", "postgresql://db.example.org/mlflow"),
        ("https://token@mlflow.example.org/", "https://mlflow.example.org/"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),  # no authority: an '@' in a path stays
        ("databricks", "databricks"),
    ],
)
def test_redaction_keeps_the_host_and_drops_the_credentials(uri, redacted):
    assert redact(uri) == redacted


TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=500, deadline=None)
@given(scheme=TEXT, user=TEXT, password=TEXT, rest=TEXT)
def test_redaction_never_shows_the_password(scheme, user, password, rest):
    """Any text before `://`, any user name and password (unencoded '/', '@', '#', ':' or '[' included), anything
    after the `@`: the redacted URI never holds the password."""
    secret = f"\N{SECTION SIGN}{password}"
    assume("\N{SECTION SIGN}" not in scheme + user + rest)
    assume("://" not in scheme)  # the scheme is what comes before the first `://`
    assume(not user.startswith(("/", "?", "#")))  # then `://` opens no authority: a path (sqlite:////...), no user
    assert secret not in redact(f"{scheme}://{user}:{secret}@{rest}")


@settings(max_examples=500, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=60) | st.from_regex(r"\A[a-z]+://[^@]*@.*\Z"))
def test_redaction_and_the_check_never_crash_on_any_string(text):
    redact(text)
    store_uri.credentials(text)
    with contextlib.suppress(ValueError):  # the check's one refusal: a ValueError with the line
        store_uri.check(text)


@settings(max_examples=300, deadline=None)
@given(uri=TEXT.map(lambda rest: f"http://alice:\N{SECTION SIGN}pw@{rest}"))
def test_the_line_for_any_unparsable_uri_holds_no_password(uri):
    """What the config check prints for a URI it refuses: one line, never the password."""
    try:
        store_uri.check(uri)
    except ValueError as err:
        line = str(err)
        assert "\N{SECTION SIGN}pw" not in line and "\n" not in line, line


def test_credentials_in_the_uri_are_never_shown():
    assert redact("https://alice:s3cret@mlflow.example.org:8443/") == "https://mlflow.example.org:8443/"
    assert redact("http://alice:s3cret@[::1]:5000") == "http://[::1]:5000"
    assert redact("sqlite:////work/repo/mlruns/mlflow.db") == "sqlite:////work/repo/mlruns/mlflow.db"
