"""The request guard in front of MLflow's scoring app, in-process: 413 before the body is read, 400 for
a body that is not JSON, short error answers that never repeat the request, and successes untouched.
The real `make serve` behind it: tests/integration/test_promoted.py."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from gdpipe.request_guard import FIELDS, RequestGuard

LIMIT = 1000


def call(app, body: bytes, *, chunks: int = 1, declare: bool = True, content_type: bytes = b"application/json"):
    """POST `body` to the ASGI `app` in `chunks` pieces: (status, answer, bytes of the body the app read)."""
    headers = [(b"content-type", content_type)] + ([(b"content-length", str(len(body)).encode())] if declare else [])
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
    size = -(-len(body) // chunks) or 1
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    read, sent = [], []

    async def receive():
        if len(read) == len(pieces):
            return {"type": "http.disconnect"}
        read.append(pieces[len(read)])
        return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(pieces)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    content = b"".join(message.get("body", b"") for message in sent[1:])
    return status, content, sum(map(len, read))


def echo(status: int = 200):
    """An app that answers `status` with the whole request repeated, in two pieces, as MLflow's errors do."""

    async def app(scope, receive, send):
        message = await receive()
        assert not message["more_body"]  # the guard hands on the body whole
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Failed to predict data '", "more_body": True})
        await send({"type": "http.response.body", "body": message["body"] + b"'"})

    return app


def test_a_body_over_the_limit_is_refused_with_413_before_a_byte_of_it_is_read():
    status, answer, read = call(RequestGuard(echo(), LIMIT), b"[" + b"5.0," * 10_000 + b"5.0]")
    assert (status, read) == (413, 0)
    assert json.loads(answer) == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "the request body is larger than this server's limit of 1,000 bytes",
    }


def test_a_chunked_body_over_the_limit_is_refused_once_the_limit_is_passed():
    body = b'{"inputs": [' + b"5.0, " * 2_000 + b"5.0]}"
    status, _, read = call(RequestGuard(echo(), LIMIT), body, chunks=100, declare=False)
    assert status == 413 and LIMIT < read <= LIMIT + len(body) // 100 + 1


def test_a_body_at_the_limit_reaches_the_app_whole_and_its_answer_passes_unchanged():
    body = b'{"inputs": [' + b"5.0, " * ((LIMIT - 20) // 5) + b"5.0]}"
    assert len(body) <= LIMIT
    status, answer, read = call(RequestGuard(echo(), LIMIT), body, chunks=7)
    assert (status, answer, read) == (200, b"Failed to predict data '" + body + b"'", len(body))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"inputs": [5.0, \xff\xfe]}', "the body is not UTF-8"),
        (b'{"inputs": [5.0,', "the body is not valid JSON"),
        (b"", "the body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the body's JSON is nested too deeply"),
    ],
)
def test_a_body_that_is_not_json_is_a_400_that_does_not_repeat_it(body, problem):
    status, answer, read = call(RequestGuard(echo(), 1_000_000), body)
    assert status == 400 and read == len(body)
    assert json.loads(answer) == {
        "error_code": "BAD_REQUEST",
        "message": f'{problem}: send JSON such as {{"inputs": [5.0, 7.0]}}',
    }


def test_an_error_answer_keeps_the_models_own_line_and_drops_the_repeated_input():
    async def mlflow_like(scope, receive, send):
        data = (await receive())["body"].decode()
        line = "gdpipe's model takes x as a list of numbers of finite numbers; got values of type <U4"
        content = json.dumps(
            {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Failed to predict data '{data}'. \nError: {line}"}
        )
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": content.encode()})

    body = json.dumps({"inputs": ["secret-looking input"] * 50}).encode()
    status, answer, _ = call(RequestGuard(mlflow_like, 1_000_000), body)
    assert status == 400 and b"secret-looking" not in answer
    assert (
        json.loads(answer)["message"]
        == "gdpipe's model takes x as a list of numbers of finite numbers; got values of type <U4"
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (415, 'send Content-Type: application/json with a body such as {"inputs": [5.0, 7.0]}'),
        (422, f'bad request: send JSON with one field of {FIELDS}, such as {{"inputs": [5.0, 7.0]}}'),
        (500, "the server failed to answer this request; its log says why"),
        (504, "the prediction took longer than the server allows"),
    ],
)
def test_any_other_error_answer_is_one_short_line_per_status(status, message):
    body = b'{"inputs": ["a long and private input"]}'
    got, answer, _ = call(RequestGuard(echo(status), LIMIT), body, content_type=b"text/csv")
    assert got == status and json.loads(answer)["message"] == message and len(answer) < 300


def test_an_app_that_raises_gives_a_500_and_one_line_in_the_log(caplog):
    async def deep(scope, receive, send):
        await receive()
        raise RecursionError("maximum recursion depth exceeded")

    with caplog.at_level(logging.ERROR, logger="gdpipe.serve"):
        status, answer, _ = call(RequestGuard(deep, LIMIT), b"[1]")
    assert status == 500 and json.loads(answer)["error_code"] == "INTERNAL_ERROR"
    assert [record.getMessage() for record in caplog.records] == ["POST /invocations failed: RecursionError"]
