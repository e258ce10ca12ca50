"""What `make serve` puts in front of MLflow's scoring app: a request larger than a limit is refused
with 413 before it is read whole, a body that is not JSON (bad UTF-8, bad syntax, nested past
Python's recursion limit) is a 400, and every error answer is a short JSON line that never repeats
the request. MLflow's app is served unchanged behind it (an ASGI app wrapping an ASGI app).

MLflow's own answers repeat the whole input ("Failed to predict data '<the input>'"), its
RecursionError on deep JSON is a 500 with a traceback in the log, and `mlflow models serve` has no
setting for a body limit: hence this guard. A reverse proxy (nginx's client_max_body_size) would
give the 413, but not a 400 for deep JSON, and `make serve` would need a system package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

EXAMPLE = '{"inputs": [5.0, 7.0]}'
FIELDS = "inputs, instances, dataframe_split, dataframe_records"  # the fields MLflow's scoring app reads
# gdpipe's model says what it accepts and what it got (a type, a shape, a count, never the values);
# MLflow wraps that line in one that repeats the input: only the model's line is kept.
MODEL_LINE = re.compile(r"gdpipe's model takes x as [^\n']*")
CODES = {400: "BAD_REQUEST", 413: "REQUEST_LIMIT_EXCEEDED", 415: "BAD_REQUEST", 504: "REQUEST_LIMIT_EXCEEDED"}
MESSAGES = {
    400: f"bad request: send JSON with one field of {FIELDS}, such as {EXAMPLE}",
    415: f"send Content-Type: application/json with a body such as {EXAMPLE}",
    504: "the prediction took longer than the server allows",
}

_log = logging.getLogger("gdpipe.serve")


class RequestGuard:
    """An ASGI app: `app` behind a body limit of `max_bytes`, with short error answers."""

    def __init__(self, app: App, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await answer(send, 413, self._too_large())  # before reading a byte of the body
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:  # a chunked body, which declares no length
                return await answer(send, 413, self._too_large())
            if not message.get("more_body", False):
                break
        if _is_json(scope) and (problem := json_problem(bytes(body))):
            return await answer(send, 400, f"{problem}: send JSON such as {EXAMPLE}")
        await self._forward(scope, bytes(body), send)
        return None

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes:,} bytes"

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        """Run the app on the body read; a success passes through, an error answer is shortened."""
        delivered = False
        error: dict[str, Any] | None = None  # the error answer's status and the body it has sent so far

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def shorten(message: Message) -> None:
            nonlocal error
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error = {"status": message["status"], "body": bytearray(), "answered": False}
            elif error is None:
                await send(message)
            elif message["type"] == "http.response.body":
                error["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    error["answered"] = True
                    await answer(send, error["status"], short_message(error["status"], bytes(error["body"])))

        try:
            await self.app(scope, replay, shorten)
        except Exception as err:  # the app failed: one line in the log, not a traceback
            _log.error("%s %s failed: %s", scope.get("method"), scope.get("path"), type(err).__name__)
            if error is None or not error["answered"]:
                await answer(send, 500, short_message(500, b""))


def json_problem(body: bytes) -> str | None:
    """What is wrong with a JSON body, in a few words, or None when it parses."""
    try:
        json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    except RecursionError:
        return "the body's JSON is nested too deeply"
    except ValueError:
        return "the body is not valid JSON"
    return None


def short_message(status: int, body: bytes) -> str:
    """The line an error answer keeps: the model's own line if it said one, else one per status."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, TypeError, KeyError):
        text = str(json.loads(text)["message"])  # MLflow's answers are {"error_code", "message", ...}
    if found := MODEL_LINE.search(text):
        return found.group(0)
    if status >= 500 and status != 504:
        return "the server failed to answer this request; its log says why"
    return MESSAGES.get(status, MESSAGES[400])


async def answer(send: Send, status: int, message: str) -> None:
    """A JSON error answer in MLflow's shape ({"error_code", "message"}), which closes the connection."""
    code = CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    content = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": content})


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The value of the request's header `name` (lower case), or None."""
    return next((value for key, value in scope.get("headers", []) if key.lower() == name), None)


def _content_length(scope: Scope) -> int | None:
    declared = _header(scope, b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def _is_json(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or b""
    return content_type.split(b";")[0].strip().lower() == b"application/json"
