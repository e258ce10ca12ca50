"""Promotion and serving on a copy of the project: `make promote` moves the champion only when the gate
passes, two of them in one clone take turns, and `make serve` answers f(x) over HTTP, refusing bad and
hostile requests early with short answers in bounded memory. The promotion itself, on a store in this
process: test_registry.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import served

from support import REPO, VARIANTS, child_env, make, run_stage, stages_run, wait_for


def store(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def set_epochs(repo: Path, old: int, new: int) -> None:
    path = repo / "params.yaml"
    text = path.read_text()
    assert text.count(f"  epochs: {old}\n") == 1
    path.write_text(text.replace(f"  epochs: {old}\n", f"  epochs: {new}\n"))


# --- promotion and serving --------------------------------------------------------------------


@pytest.fixture(scope="module")
def promoted_repo(reproduced_repo, tmp_path_factory, empty_store) -> Path:
    """A copy of the project after `make promote`: champion on both variants (shared: tests only read it)."""
    repo = tmp_path_factory.mktemp("promoted") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")  # a store of its own, with no experiment yet
    (repo / "published.json").unlink()  # as in a fresh clone: track publishes to this store
    done = make(repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    promoted = "gdpipe-numpy: version 1 is champion (was none)\ngdpipe-torch: version 1 is champion (was none)\n"
    assert done.stdout.endswith(promoted)
    return repo


def test_promote_moves_champion_only_when_the_gate_passes_and_a_known_result_adds_no_version(promoted_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(promoted_repo, repo, symlinks=True)  # the store's artifacts stay the original's: read only
    client = store(repo)
    set_epochs(repo, 100, 5)
    failed = make(repo, "promote")
    assert failed.returncode != 0
    assert "FAIL: 4 of 7 checks failed" in failed.stdout
    for variant in VARIANTS:
        why = f"the gate failed (abs_error ({variant}), loss ({variant}))"
        assert f"gdpipe-{variant}: version 1 stays champion; version 2 was not promoted: {why}\n" in failed.stdout
        assert client.get_registered_model(f"gdpipe-{variant}").aliases == {"champion": 1, "challenger": 2}
    set_epochs(repo, 5, 100)
    done = make(repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "track" in stages_run(done.stdout)  # the rest comes back from the run-cache
    kept = "gdpipe-numpy: version 1 is champion (already)\ngdpipe-torch: version 1 is champion (already)\n"
    assert done.stdout.endswith(kept)
    for variant in VARIANTS:
        assert sorted(int(v.version) for v in client.search_model_versions(f"name = 'gdpipe-{variant}'")) == [1, 2]
        assert client.get_registered_model(f"gdpipe-{variant}").aliases == {"champion": 1, "challenger": 1}


WAITING = "gdpipe: another make repro, check or promote runs dvc repro in this clone; waiting for it (at most 600 s)\n"


def test_two_make_promote_in_one_clone_take_turns_and_say_so_in_one_line(promoted_repo, tmp_path, reaper):
    repo = tmp_path / "repo"
    shutil.copytree(promoted_repo, repo, symlinks=True)
    (repo / "published.json").unlink()  # track finds the result's runs in the copy's store, and names it in runs.json
    lock = repo / ".dvc" / "tmp" / "gdpipe-repro.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    outs = [tmp_path / f"promote-{index}" for index in range(2)]
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a make repro, check or promote under way: both wait for it, then take turns
        promoters = []
        for out in outs:
            with open(f"{out}.out", "w") as stdout, open(f"{out}.err", "w") as stderr:
                command = ["make", "-o", ".venv/.installed", "promote"]
                promoters.append(subprocess.Popen(command, cwd=repo, stdout=stdout, stderr=stderr, env=child_env()))
            reaper(promoters[-1])
        for promoter, out in zip(promoters, outs, strict=True):
            wait_for(lambda out=out: Path(f"{out}.err").read_text() == WAITING, promoter, what="the waiting line")
    kept = "gdpipe-numpy: version 1 is champion (already)\ngdpipe-torch: version 1 is champion (already)\n"
    for promoter, out in zip(promoters, outs, strict=True):
        assert promoter.wait(timeout=300) == 0, Path(f"{out}.err").read_text()
        assert Path(f"{out}.err").read_text() == WAITING  # DVC never found its lock taken
        assert Path(f"{out}.out").read_text().endswith(kept)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stopped = make(repo, "promote", "REPRO_WAIT=0.1")
    assert stopped.returncode == 2 and stopped.stdout.count('dvc" repro') == 1  # make's echo of the command only
    waited, error, make_error = stopped.stderr.splitlines()
    assert waited == WAITING.replace("600", "0.1").strip()
    assert error == (
        "gdpipe: error: another make repro, check or promote still runs dvc repro in this clone after 0.1 s "
        "(it holds .dvc/tmp/gdpipe-repro.lock): let it finish or stop it, then run this again"
    )
    assert make_error.startswith("make: *** [Makefile:") and make_error.endswith("pipeline] Error 2")


def test_promote_refuses_a_verdict_about_other_metrics(promoted_repo, tmp_path, monkeypatch):
    from gdpipe.track import registry

    repo = tmp_path / "repo"
    shutil.copytree(promoted_repo, repo, symlinks=True)
    monkeypatch.chdir(repo)
    # runs.json names the original's store; nothing is written to it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{promoted_repo / 'mlruns' / 'mlflow.db'}")
    (repo / "metrics.json").write_text((repo / "metrics.json").read_text().replace("10.0", "10.5"))
    assert run_stage(registry.main, ["promote"]) == (
        2,
        "gdpipe: error: reports/check.json is about another metrics.json; run make promote (it runs the gate first)\n",
    )


def test_serve_without_a_champion_says_to_promote_first(own_reproduced_repo, monkeypatch):
    from gdpipe.track import registry

    monkeypatch.chdir(own_reproduced_repo)
    uri = f"sqlite:///{own_reproduced_repo / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    expected = f"gdpipe: error: gdpipe-torch has no champion in {uri}: run make promote first\n"
    assert run_stage(registry.main, ["serve"]) == (2, expected)


def test_make_serve_takes_its_body_limit_from_serve_max_bytes_and_refuses_a_limit_that_is_not_positive():
    from gdpipe.track import registry

    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "serve", "SERVE_MAX_BYTES=1000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=child_env(),  # no MAKEFLAGS of a make running the tests: no "Entering directory" lines
    )
    assert dry.stdout.rstrip().endswith("serve --variant torch --port 5001 --max-bytes 1000"), dry.stdout
    expected = "gdpipe: error: SERVE_MAX_BYTES must be a positive number of bytes, got 0\n"
    assert run_stage(registry.main, ["serve", "--max-bytes", "0"]) == (2, expected)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


GOOD = [
    (b'{"inputs": [5.0, 7.0]}', [9.999998211860657, 13.99999749660492]),
    (b'{"inputs": [[5.0], [7.0]]}', [9.999998211860657, 13.99999749660492]),
    (b'{"dataframe_split": {"columns": ["x"], "data": [[5.0], [7.0]]}}', [9.999998211860657, 13.99999749660492]),
    (b'{"dataframe_records": [{"x": 5.0}]}', [9.999998211860657]),
]
BAD = [
    (b'{"inputs": ["five"]}', "got values of type"),
    (b'{"inputs": [NaN]}', "got NaN or infinity"),
    (b'{"inputs": [Infinity]}', "got NaN or infinity"),
    (
        b'{"instances_missing": [5.0]}',
        "send JSON with one field of inputs, instances, dataframe_split, dataframe_records",
    ),
    (b'{"inputs": [[5.0, 1.0]]}', "got an array of shape (1, 2)"),
    (b'{"inputs": []}', "got 0 values"),
    (b'{"inputs": [' + b", ".join([b"5.0"] * 100_001) + b"]}", "got 100001 values (1 to 100,000 per request)"),
]


def test_make_serve_answers_f_of_x_over_http_and_survives_bad_requests(promoted_repo):
    with served(promoted_repo, "serve", "SERVE_PORT") as url:
        for body, message in BAD:
            code, answer = post(f"{url}/invocations", body)
            assert code == 400 and message in answer["message"], (body[:60], code, answer)
            assert len(json.dumps(answer)) < 300 and body[:13].decode() not in answer["message"]  # no echo
            assert post(f"{url}/invocations", GOOD[0][0]) == (200, {"predictions": GOOD[0][1]})  # still serving
        for body, predictions in GOOD:
            assert post(f"{url}/invocations", body) == (200, {"predictions": predictions}), body
    log = promoted_repo.parent / "serve.log"
    assert "serving models:/gdpipe-torch/1 (gdpipe-torch@champion) on http://127.0.0.1:" in log.read_text()


def raw_post(port: int, body: bytes, declared: int | None = None) -> tuple[int, bytes]:
    """POST `body` on a socket of its own, declaring `declared` bytes (default: len(body)), sending no more
    than the server reads: the status and the whole answer, however early the server answers and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        head = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        connection.sendall(f"{head}Content-Length: {declared or len(body)}\r\n\r\n".encode())
        with contextlib.suppress(OSError):  # the server answered and closed before the body was all sent
            connection.sendall(body)
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    return int(answer.split(b" ", 2)[1]), answer


def test_make_serve_refuses_hostile_requests_early_with_short_answers_in_bounded_memory(promoted_repo):
    """A body over SERVE_MAX_BYTES gets 413 before it is sent, eight at once too; a body of any other
    malformed shape a 400; no answer repeats the request; eight hostile bodies at once just under the
    limit leave the server within a few hundred MB, where one unguarded 50 MB body took 0.9 GB."""
    import psutil

    hostile = {
        b'{"inputs": [5.0, \xff' + b"\xfe" * 3_000_000 + b"]}": "the body is not UTF-8",
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": "the body's JSON is nested too deeply",
        b'{"inputs": ["' + b"a" * 3_900_000 + b'"]}': "got values of type",
        b'{"inputs": [' + b"5.0, " * 790_000 + b"5.0]}": "got 790001 values",
    }
    with served(promoted_repo, "serve", "SERVE_PORT") as url:
        port = int(url.rsplit(":", 1)[1])
        (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        server = psutil.Process(pid)
        before = server.memory_info().rss
        code, answer = raw_post(port, b"5" * 65_536, declared=50_000_000)  # 64 KB of a 50 MB body
        assert code == 413 and b"larger than this server's limit of 4,000,000 bytes" in answer and len(answer) < 400
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(raw_post, [port] * 8, [b"a" * 50_000_000] * 8))
            assert [code for code, _ in answers] == [413] * 8
            for body, message in hostile.items():
                answers = list(pool.map(raw_post, [port] * 8, [body] * 8))
                assert {code for code, _ in answers} == {400}, (body[:40], answers[0])
                assert all(message.encode() in raw and len(raw) < 500 for _, raw in answers), answers[0]
        with open(f"/proc/{server.pid}/status") as status:
            peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
        assert peak - before < 600_000_000, (before, peak)
        assert post(f"{url}/invocations", GOOD[0][0]) == (200, {"predictions": GOOD[0][1]})  # still serving
    log = (promoted_repo.parent / "serve.log").read_text()
    assert "Traceback" not in log and "aaaa" not in log, log[-3000:]
